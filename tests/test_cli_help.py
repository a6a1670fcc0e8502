"""`--help` of the CLIs answers without importing Lightning or torchmetrics (seconds each), and `bench --help` lists
the benchmarks (importing none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pixelqa
from pixelqa import bench

ROOT = Path(pixelqa.__file__).resolve().parents[1]
HEAVY = ("lightning", "torchmetrics", "pixelqa.benchmarks")  # bench --help imports no benchmark
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
print("HEAVY", *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


def _help(module: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, heavy modules imported) of `python -m module --help`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), module],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    heavy = next(line for line in out.stderr.splitlines() if line.startswith("HEAVY")).split()[1:]
    return out.returncode, out.stdout, heavy


@pytest.mark.parametrize(
    "module",
    [
        "pixelqa.evaluate",
        "pixelqa.grid",
        "pixelqa.tinybase",
        "pixelqa.bench",
        "pixelqa.eval.seg_selection",
        "pixelqa.eval.judge",
    ],
)
def test_help_imports_no_lightning_or_torchmetrics(module):
    code, out, heavy = _help(module)
    assert code == 0 and "python -m pixelqa" in out
    assert heavy == [], f"{module} --help imported {heavy}"


def test_bench_help_lists_every_benchmark_with_a_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert set(bench.SUMMARIES) == set(bench.BENCHMARKS)
    for name in bench.BENCHMARKS:
        lines = [line for line in out.splitlines() if line.strip().startswith(f"{name} ")]
        assert len(lines) == 1 and bench.SUMMARIES[name] in lines[0], out
    assert "python -m pixelqa.bench NAME --help" in out
    with pytest.raises(SystemExit) as exit_info:  # an unknown name: the usage line on stderr, status 2, as before
        bench.main(["sideways"])
    assert exit_info.value.code == 2 and "(got 'sideways')" in capsys.readouterr().err
