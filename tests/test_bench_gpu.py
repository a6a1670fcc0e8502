"""`python -m pixelqa.bench gpu`: refuses to run without CUDA, and runs every code path at the tiny size on CPU."""

from __future__ import annotations

import pytest
import torch

from pixelqa.benchmarks import gpu


def _run(capture, argv: list[str]) -> tuple[int | None, str, str]:
    """Exit code (None when main returned), stdout and stderr of one run (`capture`: pytest's capsys or capfd)."""
    code = None
    try:
        gpu.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capture.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line(capsys) -> None:
    code, out, err = _run(capsys, [])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "CUDA" in err and "Traceback" not in err


def test_unknown_presets_exit_2(capsys) -> None:
    code, _, err = _run(capsys, ["--device", "cpu", "--presets", "unipixel-3b,huge"])
    assert code == 2 and "--presets" in err and "'unipixel-3b,huge'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_figure(capfd) -> None:
    # capfd, not capsys: the DDP ranks are spawned processes that print to the inherited file descriptor
    argv = ["--device", "cpu", "--presets", "tiny", "--steps", "1", "--repeats", "1", "--batch", "1"]
    argv += ["--propagation-frames", "4", "--new-tokens", "4", "--ddp", "2", "--strategies", "none"]
    code, out, _ = _run(capfd, argv)
    assert code is None
    figures = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    seconds = [
        "tiny_plain_qwen_step_s",
        "tiny_unipixel_step_encoder_frozen_s",
        "tiny_unipixel_step_encoder_trained_s",
        "tiny_unipixel_step_no_mask_decoding_s",
        "tiny_mask_propagation_s_per_frame",
        "tiny_sam_image_encoder_s_per_frame",
        "tiny_ddp2_step_s",
    ]
    rates = ["tiny_eval_samples_per_s", "tiny_generate_tokens_per_s"]
    ratios = ["tiny_step_ratio_encoder_frozen", "tiny_step_ratio_encoder_trained", "tiny_step_ratio_no_mask_decoding"]
    for name in seconds + rates + ratios:
        assert name in figures, f"{name} missing from:\n{out}"
        assert float(figures[name]) >= 0, name
    for name in rates + ratios + seconds[:4] + ["tiny_sam_image_encoder_s_per_frame"]:
        assert float(figures[name]) > 0, name
    ratio = float(figures["tiny_step_ratio_encoder_frozen"])
    plain, ours = float(figures["tiny_plain_qwen_step_s"]), float(figures["tiny_unipixel_step_encoder_frozen_s"])
    assert ratio == pytest.approx(ours / plain, rel=0.01)  # the ratio is of the printed step times
    assert "pixelqa.model.generation" in figures["tiny_generate_path"]  # UniPixel's own cached path
    assert "gpu" not in figures  # no CUDA line on CPU
    assert figures["settings"] == "precision bf16-mixed, tf32 on"  # trainer=gpu's precision, fit's tf32 default


@pytest.mark.parametrize("strategy", gpu.STRATEGIES)
def test_strategy_steps_are_valid_fit_commands(strategy, tmp_path, capsys) -> None:
    # Lightning runs DeepSpeed and FSDP on CUDA only: on CPU the command itself is checked, as fit resolves it
    from pixelqa import fit
    from pixelqa.benchmarks.model import write_config_dir

    path = str(write_config_dir("unipixel-3b", tmp_path / "config"))
    cmd = gpu.strategy_command(strategy, "unipixel-3b", path, str(tmp_path / "run"))
    assert cmd[1:4] == ["-m", "pixelqa.fit", "recipe=stage3"] and f"trainer={strategy}" in cmd
    assert fit.run([*cmd[3:], "--print-config"]) == {}  # resolved and printed, nothing run
    printed = capsys.readouterr().out
    assert "max_steps: 1" in printed and ("deepspeed" in printed if strategy == "deepspeed" else "fsdp" in printed)


def test_unknown_strategies_exit_2(capsys) -> None:
    code, _, err = _run(
        capsys,
        [
            "--device",
            "cpu",
            "--presets",
            "tiny",
            "--strategies",
            "zero9",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--batch",
            "1",
            "--propagation-frames",
            "2",
            "--new-tokens",
            "1",
        ],
    )
    assert code == 2 and "--strategies" in err


def test_autocast_follows_the_trainer_precision():
    from pixelqa.benchmarks.model import autocast

    a = torch.randn(4, 4)
    with autocast("cpu", "bf16-mixed"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", "32-true"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision: got '16-mixed'"):
        autocast("cpu", "16-mixed")
