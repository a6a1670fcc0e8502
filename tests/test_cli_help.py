"""`--help` of the CLIs answers without importing Lightning or torchmetrics (seconds each), `bench --help` lists
the benchmarks (importing none), and every option with a default shows it in its help line."""

from __future__ import annotations

import argparse
import importlib
import os
import re
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


# every argparse CLI, `python -m MODULE ARGS --help` (the recipe CLIs fit and evaluate take key=value, not options)
ARGPARSE_CLIS = [
    ("pixelqa.data", []),
    ("pixelqa.demo", []),
    ("pixelqa.eval.judge", []),
    ("pixelqa.eval.seg_selection", []),
    ("pixelqa.export", []),
    ("pixelqa.grid", []),
    ("pixelqa.parity", []),
    ("pixelqa.predict", []),
    ("pixelqa.tinybase", []),
    *[("pixelqa.bench", [name]) for name in bench.BENCHMARKS],
]


class _Parsed(Exception):
    """Raised in place of parsing: the parser has been recorded."""


def _parsers(monkeypatch, module: str, args: list[str]) -> list[argparse.ArgumentParser]:
    """The parser `python -m module *args --help` parses with, and its subcommands' parsers."""
    seen: list[argparse.ArgumentParser] = []

    def record(self, *a, **k):
        seen.append(self)
        raise _Parsed

    for name in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, record)
    entry = importlib.import_module(module)
    if hasattr(entry, "__path__"):  # a package: `python -m` runs its __main__
        entry = importlib.import_module(f"{module}.__main__")
    with pytest.raises(_Parsed):
        entry.main([*args, "--help"])
    parsers, i = list(seen), 0
    while i < len(parsers):  # subcommands (`data build`, ...) are parsers in a subparsers action
        for action in parsers[i]._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(p for p in action.choices.values() if p not in parsers)
        i += 1
    return parsers


def _shown(value: object) -> list[str]:
    """The ways a help line may show a default: str() (as `%(default)s` does), a list also as typed (`0 2`)."""
    return [str(value), *([" ".join(map(str, value))] if isinstance(value, list | tuple) else [])]


def _hidden_defaults(parser: argparse.ArgumentParser) -> list[str]:
    """The options of `parser` with a default (not None, not an empty list; not a flag) whose help does not say
    `default VALUE` / `default: VALUE`."""
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        default = action.default
        if action.help == argparse.SUPPRESS or action.nargs == 0 or default in (None, argparse.SUPPRESS, []):
            continue
        text = formatter._expand_help(action) if action.help else ""
        if not any(re.search(rf"default:?\s+{re.escape(shown)}(?!\w)", text) for shown in _shown(default)):
            missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest} (default {default!r})")
    return missing


def test_every_option_with_a_default_shows_it_in_help(monkeypatch):
    missing = []
    for module, args in ARGPARSE_CLIS:
        with monkeypatch.context() as patch:
            parsers = _parsers(patch, module, args)
        assert parsers, f"{module} {args}: no argparse parser found"
        for parser in parsers:
            missing += _hidden_defaults(parser)
    assert missing == [], "options whose --help hides the default:\n" + "\n".join(missing)


def test_the_default_check_sees_a_hidden_default():
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=30.0, help="idle time (default %(default)s)")
    parser.add_argument("--mode", default="a", help="a or b (default: a)")
    parser.add_argument("--path", default=None, help="a folder")
    parser.add_argument("--quiet", action="store_true", help="no output")
    assert _hidden_defaults(parser) == ["p --steps (default 3000)"]
