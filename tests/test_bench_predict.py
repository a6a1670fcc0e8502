"""`python -m pixelqa.bench predict` runs on the tiny model and prints its headline figures."""

from __future__ import annotations

import pytest

from pixelqa.benchmarks import predict


def test_predict_bench_prints_every_figure(capsys):
    predict.main(["--prompt-tokens", "120", "--new-tokens", "4", "--frames", "4", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    figures = dict(line.split(": ", 1) for line in lines[1:])
    for name in ("cached_tokens_per_s", "uncached_tokens_per_s", "propagation_s_per_frame"):
        assert float(figures[name]) > 0, name
    for name in ("cached_vs_uncached", "prefill_plus_answer_vs_single_generate"):
        assert float(figures[name].rstrip("x")) > 0, name
    assert '"prompt_tokens": 1' in lines[0]  # the prompt reached the requested length (>= 120 tokens)
    assert figures["cached_vs_uncached_identical_tokens"] == "4/4"  # float32: the two paths agree token for token
    assert "first_difference_logit_gap" not in figures


def test_predict_bench_can_leave_out_the_uncached_loop(capsys):
    predict.main(["--prompt-tokens", "60", "--new-tokens", "2", "--frames", "2", "--repeats", "1", "--skip-uncached"])
    figures = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines()[1:])
    assert "uncached_tokens_per_s" not in figures and "cached_vs_uncached" not in figures
    assert float(figures["cached_tokens_per_s"]) > 0
    assert float(figures["prefill_plus_answer_vs_single_generate"].rstrip("x")) > 0


def test_first_difference_measures_the_gap_at_the_first_differing_step():
    import torch

    from pixelqa.benchmarks.model import build_model, make_batch

    torch.manual_seed(0)
    model = build_model("tiny", "cpu").eval()
    batch = make_batch(model, 1, 2, 56)
    with torch.no_grad():  # independent route to the same logits: the teacher-forced forward's last position
        logits = model(batch, decode_masks=False).logits[0, -1].float()
    top, other = logits.argsort(descending=True)[:2].tolist()
    same = predict.first_difference(model, batch, [top, 5], [top, 5])
    assert same == {"identical": 2.0, "of": 2.0}
    parted = predict.first_difference(model, batch, [top, 5], [other, 5])
    assert parted["identical"] == 0.0 and parted["of"] == 2.0
    assert parted["gap"] == pytest.approx(float(logits[top] - logits[other]), abs=1e-4) and parted["gap"] > 0
    assert parted["scale"] == pytest.approx(float(logits.abs().max()), abs=1e-4)


def test_in_bfloat16_the_bench_reports_agreement_instead_of_asserting(capsys):
    # bf16 rounds the cached and uncached paths differently: the bench reports where they part, and never stops
    predict.main(
        ["--prompt-tokens", "60", "--new-tokens", "6", "--frames", "2", "--repeats", "1"] + ["--llm-dtype", "bfloat16"]
    )
    figures = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines()[1:])
    same, total = (int(x) for x in figures["cached_vs_uncached_identical_tokens"].split("/"))
    assert total == 6 and 0 <= same <= 6
    if same < total:  # then the gap at the first difference is printed with the logit scale
        gap, scale = figures["first_difference_logit_gap"].split(" (max |logit| ")
        assert float(gap) >= 0 and float(scale.rstrip(")")) > 0


@pytest.mark.parametrize("shown", [False, True])
def test_the_bench_prints_its_figures_without_library_deprecation_notes(recwarn, monkeypatch, capsys, shown):
    from pixelqa import bench

    if shown:  # the switch that brings them back: the check below sees them when they are there
        monkeypatch.setenv("PIXELQA_LIBRARY_WARNINGS", "1")
    else:
        monkeypatch.delenv("PIXELQA_LIBRARY_WARNINGS", raising=False)
    bench.main(["predict", "--prompt-tokens", "60", "--new-tokens", "2", "--frames", "2", "--repeats", "1"])
    notes = [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
    assert bool(notes) is shown
    assert "cached_tokens_per_s: " in capsys.readouterr().out
