"""The official protocols' model inputs reach the model (pixelqa.eval.generation over pixelqa.predict.Predictor):
the forced answer prefix ends the tokens the model reads, ground-truth masks enter the memory bank and are
injected as memory where the text names them, and each benchmark's pixel budget sets the visual tokens per frame.
The tiny real model runs; a spy on its processor records what it was given (the model itself is not replaced)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_video import build_videorefer_bench
from model_fixtures import cached_model

from pixelqa.data import masks as rle_masks
from pixelqa.data.budgets import TOKEN_PIXELS
from pixelqa.data.shards import build_shards
from pixelqa.eval.generation import continuation, departures_of, memory_masks, pixel_budget, predictor_answer_fn
from pixelqa.eval.official import get_official
from pixelqa.eval.suite import BenchmarkSpec, iter_benchmark_samples
from pixelqa.predict import PredictInputError, Predictor
from pixelqa.predict.media import media_from_tensor
from pixelqa.prompt_format import MEM


class ProcessorSpy:
    """Forwards to the real processor and keeps (text, call kwargs, output) of each call."""

    def __init__(self, processor) -> None:
        self._processor = processor
        self.calls: list[tuple[str, dict, dict]] = []

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def __call__(self, text, **kwargs):
        out = self._processor(text=text, **kwargs)
        self.calls.append((text[0], kwargs, out))
        return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videorefer")
    build_videorefer_bench(root / "raw")
    for bench, split in (("videorefer_bench_q", "multi_frame"), ("videorefer_bench_d", "single_frame")):
        build_shards(bench, root / "raw", root / "shards", split=split, progress=False)
    return root / "shards"


def _first(shards: Path, bench: str, split: str, objects: int):
    """The first sample of a benchmark split with `objects` objects."""
    spec = BenchmarkSpec("x", bench, split, bench)
    return next(s for s in iter_benchmark_samples(spec, shards) if len(s.objects) == objects)


@pytest.fixture()
def spied(monkeypatch):
    model = cached_model()
    spy = ProcessorSpy(model.processor)
    monkeypatch.setattr(model, "processor", spy)
    torch.manual_seed(0)
    return model, spy


def test_memory_masks_and_budget_of_a_request(shards):
    sample = _first(shards, "videorefer_bench_q", "multi_frame", 2)
    request = get_official("videorefer_bench_q").request(sample)
    mem = memory_masks(request, request.sam_frames)
    # object 1 is annotated on frames 4 and 8 only: its memory is empty on frame 0, its RLE elsewhere
    assert request.sam_frames == [0, 4, 8] and sorted(mem) == [0, 1]
    assert not mem[1][0].any()
    truth = rle_masks.decode(sample.objects[1].masks[8]).astype(bool)
    assert np.array_equal(mem[1][2].numpy(), truth) and truth.any()
    kw = pixel_budget(request)["videos_kwargs"]
    assert kw["size"] == {"shortest_edge": 100 * TOKEN_PIXELS, "longest_edge": 144 * TOKEN_PIXELS}
    assert get_official("refcoco").token_budget == (128, 4096)  # images: up to 4096 tokens
    assert continuation("The best option is (B)", "The best option is (") == "B)"
    assert continuation("B", "The best option is (") == "B"


@pytest.mark.slow
def test_videorefer_q_prefix_memory_and_budget_reach_the_model(shards, spied):
    model, spy = spied
    sample = _first(shards, "videorefer_bench_q", "multi_frame", 2)
    protocol = get_official("videorefer_bench_q")
    request = protocol.request(sample)
    answer_fn = predictor_answer_fn(model, max_new_tokens=2)
    pred = answer_fn(request)
    assert departures_of(answer_fn) == []
    text, kwargs, out = spy.calls[-1]
    # the forced prefix is the end of the tokens the model reads before generating
    ids = out["input_ids"][0].tolist()
    assert model.processor.tokenizer.decode(ids).endswith("assistant\nThe best option is (")
    # both ground-truth objects are injected as memory before the question (one <|mem|> per frame pair, 3 frames)
    assert "[0]: " in text and "[1]: " in text and text.count(MEM) >= 2
    assert "Which is higher, [0] or [1]?" in text
    # VideoRefer's budget, 100-144 tokens a frame: the processor got it and the grid holds that many per frame
    assert kwargs["videos_kwargs"]["size"]["longest_edge"] == 144 * TOKEN_PIXELS
    t, gh, gw = out["video_grid_thw"][0].tolist()
    assert 100 <= gh * gw // 4 <= 144
    # the protocol scores the continuation after the prefix
    assert not pred.text.startswith("The best option is (")
    assert set(protocol.score(sample, request, pred)) >= {"correct", "chosen"}


@pytest.mark.slow
def test_describe_and_image_budget_reach_the_model(shards, spied):
    model, spy = spied
    sample = _first(shards, "videorefer_bench_d", "single_frame", 1)
    request = get_official("videorefer_bench_d").request(sample)
    assert request.text == "Please give a detailed description of the highlighted object [0] in the video."
    predictor_answer_fn(model, max_new_tokens=1)(request)
    text, _, _ = spy.calls[-1]
    assert text.count("[0]: ") == 1 and MEM in text and "assistant\n" == text[-len("assistant\n") :]
    # an image at the image budget (128..4096 tokens): a 112 x 112 image is scaled up to 128 tokens at least
    predictor = Predictor(model, max_new_tokens=1)
    img = torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8)
    budget = {"images_kwargs": {"do_resize": True, "size": {"shortest_edge": 128 * 784, "longest_edge": 4096 * 784}}}
    predictor.run(media_from_tensor(img, "image"), "Please segment the cat in this image.", processor_kwargs=budget)
    _, gh, gw = spy.calls[-1][2]["image_grid_thw"][0].tolist()
    assert gh * gw // 4 >= 128
    predictor.run(media_from_tensor(img, "image"), "Please segment the cat in this image.")
    _, gh, gw = spy.calls[-1][2]["image_grid_thw"][0].tolist()
    assert gh * gw // 4 < 128  # without the budget the image enters at its own 16 tokens: the budget did it


@pytest.mark.slow
def test_predictor_memory_enters_the_bank_and_bad_memory_is_named(spied):
    model, spy = spied
    media = media_from_tensor(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), "video")
    gt = torch.zeros(4, 64, 64, dtype=torch.bool)
    gt[:, 10:30, 20:40] = True
    out = Predictor(model, max_new_tokens=1).run(media, "What is [3] doing?", memory={3: gt})
    assert torch.equal(out.memory[3], gt)
    assert out.model_text.endswith("\n[3]: <1>-<2> <|mem|> <3>-<4> <|mem|>\nWhat is [3] doing?")
    assert spy.calls[-1][0].count(MEM) == 2  # and those memory tokens are in what the model reads
    with pytest.raises(PredictInputError, match=r"memory\[3\]: got masks of shape \(2, 64, 64\)"):
        Predictor(model).run(media, "What is [3] doing?", memory={3: gt[:2]})
    with pytest.raises(PredictInputError, match="names object \\[4\\]"):
        Predictor(model).run(media, "What is [4] doing?", memory={3: gt})


@pytest.mark.slow
def test_bench_evaluate_reports_samples_per_second(capsys):
    from pixelqa.bench import main

    main(["evaluate", "--samples", "1", "--frames", "4", "--new-tokens", "2", "--only", "mevis,videorefer_bench_q"])
    lines = capsys.readouterr().out.strip().splitlines()
    figures = dict(line.split(": ") for line in lines[-5:])
    assert list(figures) == [
        "mevis_samples_per_s",
        "videorefer_bench_q_samples_per_s",
        "chat_stand_in_samples_per_s",
        "official_vs_stand_in_time",
        "suite_samples_per_s",
    ]
    assert all(float(v.rstrip("x")) > 0 for v in figures.values())
    assert '"departures": []' in lines[-6]  # prefixes, memory and budgets all reached the model


RELEASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"


@pytest.mark.slow
@pytest.mark.skipif(not RELEASE.is_dir(), reason="needs the shared released-format fixture")
def test_videorefer_q_through_the_suite_on_the_released_format_checkpoint(shards, tmp_path, monkeypatch):
    from pixelqa.config import load_recipe, to_object
    from pixelqa.eval.model_loading import load_model
    from pixelqa.eval.suite import finish_benchmark, merge_records, run_benchmark

    torch.manual_seed(0)
    recipe = to_object(load_recipe(["model=unipixel-3b", f"model.path={RELEASE}", "model.dtype=float32"]))
    model = load_model(recipe, None)
    spy = ProcessorSpy(model.processor)
    monkeypatch.setattr(model, "processor", spy)
    spec = BenchmarkSpec("videorefer_q_multi", "videorefer_bench_q", "multi_frame", "videorefer_bench_q")
    answer_fn = predictor_answer_fn(model, max_new_tokens=2)
    run_benchmark(spec, answer_fn, shards, tmp_path / "out")
    result = finish_benchmark(spec, shards, tmp_path / "out")
    records = merge_records(tmp_path / "out" / "videorefer_q_multi")
    assert len(records) == 2 and result.rows[-1]["questions"] == 2 and departures_of(answer_fn) == []
    # every record's score is its generated text read by the official first-character rule
    from pixelqa.eval import answers

    options = {"Relationship Question": 4, "Basic Questions": 2}  # the fixture's two questions
    for r in records:
        assert r["chosen"] == answers.option_letter(answers.parse_option(r["text"], options[r["question_type"]]))
    # what the released model read: its <|mem|> id (151667) once per object and frame pair, the forced prefix last
    for text, _, out in spy.calls:
        ids = out["input_ids"][0].tolist()
        assert ids.count(151667) == text.count(MEM) >= 1
        assert model.processor.tokenizer.decode(ids[-6:]).endswith("The best option is (")
