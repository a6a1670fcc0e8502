"""The synthetic benchmark scored by free generation: answer matching, mask matching (missing <|seg|> -> J 0, extra
counted), the mapping of a sample's turns to the query, and the whole pass on the tiny model and the CLI."""

import copy
import dataclasses

import pytest
import torch
from model_fixtures import cached_model

from pixelqa.config import RecipeError, load_recipe, to_object
from pixelqa.data import masks as rle_masks
from pixelqa.data.budgets import PixelBudget
from pixelqa.data.synthetic import make_sample
from pixelqa.eval.runner import POOLED
from pixelqa.eval.synthetic_generate import (
    SampleOutcome,
    SyntheticGenerator,
    after_fit_generation,
    answer_correct,
    check_generation_scoring,
    generate_and_score,
    match_masks,
    normalise_answer,
    query_of,
    score_outcomes,
    score_sample,
)
from pixelqa.metrics import JAndF
from pixelqa.prompt_format import REF, SEG


def _sample(task: str, index: int = 0):
    return make_sample(index, "val", task=task)


def _gt(sample, oid: int) -> torch.Tensor:
    """(T, H, W) bool ground truth of an object, decoded here from the sample's RLE."""
    track = sample.objects[oid].masks
    return torch.stack([torch.from_numpy(rle_masks.decode(track[t]).astype(bool)) for t in sorted(track)])


def test_answers_match_after_normalising_and_mcq_letters_as_the_official_parser_reads():
    assert normalise_answer("  Red. ") == "red" and normalise_answer("[2].") == "[2]"
    assert answer_correct("red", "Red.") and answer_correct(" RED. ", "Red.")
    assert not answer_correct("Red, I think.", "Red.") and not answer_correct("Blue.", "Red.")
    four = ["red", "green", "blue", "yellow"]
    assert answer_correct("B) green", "B", four) and answer_correct("(b).", "B", four)
    assert not answer_correct("The best option is (C)", "C", four)  # the official reading: its first letter, 't'
    assert not answer_correct("C", "B", four) and not answer_correct("E", "A", four)  # E is no option of four
    assert not answer_correct("green", "B", four)  # the letter is what counts, as in the official scoring
    with pytest.raises(ValueError, match="reference"):
        answer_correct("A", "Z", four)


def test_a_missing_mask_scores_an_empty_mask_and_extra_masks_are_counted():
    a = torch.zeros(2, 8, 8, dtype=torch.bool)
    a[:, 2:6, 2:6] = True
    b = torch.zeros(2, 8, 8, dtype=torch.bool)
    b[:, 0:2, 0:8] = True
    pairs, missing, extra = match_masks([a, b], [a])
    assert (missing, extra) == (1, 0) and not pairs[1][0].any()
    metric = JAndF()
    for pred, target in pairs:
        metric.update(pred, target)
    assert float(metric.compute()["J"]) == pytest.approx(0.5)  # J 1 for a, J 0 for the missing b
    _, missing, extra = match_masks([a], [a, b, b])
    assert (missing, extra) == (0, 2)
    with pytest.raises(ValueError, match="shape"):
        match_masks([a], [a[:1]])


def test_turns_map_to_the_query_two_pass_for_memory_tasks_one_pass_for_region_tasks():
    mem = _sample("memory_qa", 2)  # asked as a first turn: objects given as ground-truth memory, no pre-fill
    q = query_of(mem)
    assert not q.prefill and not q.prompts and q.memory == [0, 1] and q.targets == []
    assert q.text == "Which is larger, [0] or [1]?" and q.reference == mem.turns[-1].text
    mem = _sample("memory_qa", 0)  # pre-fill from the prompts, then the question: two passes
    q = query_of(mem)
    assert q.prefill and q.targets == [0, 1] and q.memory == [] and q.reference == mem.turns[-1].text
    assert f"[0] {REF}" in q.text and f"[1] {REF}" in q.text and [p.object_id for p in q.prompts] == [0, 1]
    pix = _sample("pixelqa")
    q = query_of(pix)
    assert q.prefill and q.targets == [0] and q.choices == pix.choices and f"[0] {REF}" in q.text
    reg = _sample("region_qa")
    q = query_of(reg)
    assert not q.prefill and q.text == reg.turns[0].text and q.targets == [] and len(q.prompts) == 1
    res = _sample("res")
    q = query_of(res)
    assert not q.prefill and not q.prompts and q.targets == res.turns[1].seg_objects and SEG in q.reference


def test_a_perfect_generation_scores_one_and_a_wrong_reference_fails():
    s = _sample("res")
    q = query_of(s)
    target = q.targets[0]
    good = score_sample(s, q, f"It is {SEG}.", {}, [_gt(s, target)])
    assert good.correct and (good.missing, good.extra) == (0, 0)
    result = score_outcomes([good])
    assert result.metrics["gen/J"] == pytest.approx(1.0) and result.metrics["gen/J&F"] == pytest.approx(1.0)
    other = next(k for k in s.objects if k != target)
    wrong = score_sample(s, q, "It is the red one.", {}, [_gt(s, other)])  # another object's mask, no <|seg|>
    assert not wrong.correct
    assert score_outcomes([wrong]).metrics["gen/J"] < 0.1
    none = score_sample(s, q, "I cannot say.", {}, [])
    assert none.missing == 1 and score_outcomes([none]).metrics["gen/J&F"] == 0.0
    assert score_outcomes([none]).metrics["gen/samples_missing_masks"] == 1.0
    region = _sample("region_qa")
    chatty = score_sample(region, query_of(region), f"It is {SEG}.", {}, [])  # a <|seg|> where none is asked for
    assert chatty.extra == 1 and not chatty.correct


def test_prefilled_objects_are_scored_and_a_seg_in_the_answer_is_extra():
    s, other = _sample("pixelqa"), _sample("pixelqa", 13)
    right = score_sample(s, query_of(s), s.turns[-1].text, {0: _gt(s, 0)}, [_gt(s, 0)])
    empty = score_sample(other, query_of(other), "Z", {0: torch.zeros_like(_gt(other, 0))}, [])
    assert right.correct and (right.missing, right.extra) == (0, 1) and not empty.correct
    m = score_outcomes([right, empty]).metrics
    assert m["gen/J"] == pytest.approx(0.5) and m["gen/samples_extra_masks"] == 1.0


def test_qa_accuracy_pools_the_qa_tasks_only():
    def outcome(task, ok):
        return SampleOutcome(f"k-{task}", task, "", ok, 0, 0)

    result = score_outcomes([outcome("region_qa", True), outcome("mcq", False), outcome("caption", True)])
    assert result.metrics["gen/qa_acc"] == pytest.approx(0.5)  # caption is not a QA task
    rows = {r["task"]: r for r in result.rows}
    assert rows["caption"]["answer_acc"] == 1.0 and rows[POOLED]["samples"] == 3
    assert "gen/J&F" not in result.metrics  # no mask was scored


def test_tiny_model_end_to_end_scores_its_own_answers_against_the_references():
    model = cached_model()
    budget = PixelBudget(12544, 12544, 12544, 12544)  # the demo's 112 x 112 frames: 4 x 4 visual tokens
    samples = [make_sample(i, "val") for i in range(13)]  # one of every task
    result = generate_and_score(model, samples, llm_frames=4, max_new_tokens=6, num_overlays=2, budget=budget)
    m = result.metrics
    assert m["gen/samples"] == 13 and {"gen/J&F", "gen/qa_acc"} <= set(m)
    assert not any("time" in k for k in m)  # scores and counts only: the pass's wall time is fit's time/val_gen_s
    assert {r["task"] for r in result.rows} == {s.task for s in samples} | {POOLED}
    assert len(result.overlays) == 2 and result.overlays[0]["pred"].shape == result.overlays[0]["target"].shape
    generator = SyntheticGenerator(model, 4, 6, budget)
    pix = _sample("pixelqa")
    _, prefilled, _ = generator.run(pix, query_of(pix))
    assert set(prefilled) == {0} and prefilled[0].shape == _gt(pix, 0).shape  # the prompted object pre-filled
    mem = _sample("memory_qa", 2)
    answer, prefilled, _ = generator.run(mem, query_of(mem))  # ground-truth memory: nothing to pre-fill
    assert prefilled == {} and isinstance(answer, str)
    # QA samples with the references set to what the model answers: every answer is then right ...
    answered = []
    for s in [x for x in samples if x.task in ("region_qa", "image_qa", "video_qa")]:
        answer, _, _ = generator.run(s, query_of(s))
        t = copy.deepcopy(s)
        t.turns[-1] = dataclasses.replace(t.turns[-1], text=answer)
        answered.append(t)
    assert generate_and_score(model, answered, 4, 6, budget=budget).metrics["gen/qa_acc"] == 1.0
    # ... and against a wrong reference they fail
    for t in answered:
        t.turns[-1] = dataclasses.replace(t.turns[-1], text="Purple elephant.")
    assert generate_and_score(model, answered, 4, 6, budget=budget).metrics["gen/qa_acc"] == 0.0
    capped = generate_and_score(model, answered + answered[:1], 4, 2, per_task=1, budget=budget)
    assert capped.metrics["gen/samples"] == 3


def test_scoring_key_is_checked_and_generation_needs_synthetic_validation_data(capsys):
    with pytest.raises(RecipeError, match="eval.scoring"):
        load_recipe(["recipe=stage3", "eval.scoring=sampled"])
    recipe = to_object(load_recipe(["recipe=stage3", "eval.scoring=generate"]))
    check_generation_scoring(recipe)
    recipe.data.val_sources[0].name = "revos"
    with pytest.raises(RecipeError, match="val_sources"):
        check_generation_scoring(recipe)
    recipe.eval.scoring = "both"  # the demo scale's setting with a real data preset: teacher-forced only, said so
    check_generation_scoring(recipe)
    assert "scoring teacher-forced only" in capsys.readouterr().out
    assert after_fit_generation(None, recipe) == {}


def test_evaluate_cli_reports_both_scorings_side_by_side(tmp_path, monkeypatch, capsys):
    from pixelqa.evaluate import run

    monkeypatch.chdir(tmp_path)
    args = ["recipe=stage3", "eval.benchmark=synthetic", "eval.scoring=both", "tracking=none"]
    m = run([*args, "data.synthetic_val=13", "eval.generate_max_new_tokens=4"])
    assert {"synthetic/J&F", "synthetic/qa_acc", "synthetic/gen/J&F", "synthetic/gen/qa_acc"} <= set(m)
    assert m["synthetic/gen/samples"] == 13
    out = capsys.readouterr().out
    label = "all (J&F: seg tasks; answer_acc: QA tasks)"  # beside per-task rows where seg tasks show their own acc
    pooled = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines() if f"| {label} |" in line}
    assert set(pooled) == {"generate", "teacher_forced"} and "| all |" not in out  # the label says what it pools
    for scoring, key in (("teacher_forced", "synthetic/qa_acc"), ("generate", "synthetic/gen/qa_acc")):
        assert pooled[scoring][2] == "13" and pooled[scoring][6] == f"{m[key]:.4f}"  # answer_acc: QA tasks only
    with pytest.raises(RecipeError, match="generate_max_new_tokens"):
        run([*args, "data.synthetic_val=13", "eval.scoring=generate", "eval.generate_max_new_tokens=0"])


def test_fit_scores_by_generation_alone_or_next_to_teacher_forcing(tmp_path, monkeypatch):
    from pixelqa import fit

    monkeypatch.chdir(tmp_path)
    base = [
        "recipe=stage3",
        "data.synthetic_train=8",
        "data.synthetic_val=10",
        "data.val_samples=8",  # res .. video_qa, fit's validation samples: the generation pass scores the same ones
        "data.batch_size=2",
        "trainer.max_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking=none",
        "eval.generate_max_new_tokens=4",
    ]
    m = fit.run([*base, "eval.scoring=generate", "eval.before_fit=true"])
    assert m["val/gen/samples"] == 8 and m["untrained/val/gen/samples"] == 8 and "val/gen/J&F" in m
    assert "val/J&F" not in m and "val/loss" not in m  # generation alone: no teacher-forced pass
    m = fit.run([*base, "eval.scoring=both"])  # the demo scale's setting
    assert {"val/J&F", "val/qa_acc", "val/gen/J&F", "val/gen/qa_acc"} <= set(m)
