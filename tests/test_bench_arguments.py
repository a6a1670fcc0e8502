"""Benchmark arguments a run cannot use end in one line and exit status 2, before any model is built."""

from __future__ import annotations

import pytest
import torch

from pixelqa import bench

CASES = [
    (["predict", "--repeats", "0"], "--repeats: got 0, expected an integer >= 1"),
    (["predict", "--path", "{tmp}/nowhere"], "--path: '{tmp}/nowhere' is not a directory"),
    (["evaluate", "--samples", "-1"], "--samples: got -1, expected an integer >= 1"),
    (["model", "--steps", "0"], "--steps: got 0, expected an integer >= 1"),
    (["metrics", "--repeats", "0"], "--repeats: got 0, expected an integer >= 1"),
    (["metrics", "--data", "{tmp}"], "--data: '{tmp}' lacks osvos/ or rvos/"),
    (["gpu", "--presets", "tiny", "--device", "cpu", "--steps", "0"], "--steps: got 0, expected an integer >= 1"),
    (["footprint", "--frames", "300,150"], "--frames: got '300,150', expected two frame counts, the first >= 1"),
    (["footprint", "--frames", "a,b"], "--frames: got 'a,b', expected two frame counts such as 150,300"),
    (["footprint", "--sizes", "641x360"], "--sizes: got '641x360', expected even sides of at least 16 pixels"),
    (["footprint", "--sizes", "big"], "--sizes: got 'big', expected WIDTHxHEIGHT such as 640x360"),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_benchmark_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected.replace('{tmp}', str(tmp_path))}"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_device_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["predict", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --device: got 'cuda', but no CUDA device is visible here"
