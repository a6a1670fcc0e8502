"""`python -m pixelqa.bench predict` runs on the tiny model and prints its headline figures."""

from __future__ import annotations

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


def test_predict_bench_can_leave_out_the_uncached_loop(capsys):
    predict.main(["--prompt-tokens", "60", "--new-tokens", "2", "--frames", "2", "--repeats", "1", "--skip-uncached"])
    figures = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines()[1:])
    assert "uncached_tokens_per_s" not in figures and "cached_vs_uncached" not in figures
    assert float(figures["cached_tokens_per_s"]) > 0
    assert float(figures["prefill_plus_answer_vs_single_generate"].rstrip("x")) > 0
