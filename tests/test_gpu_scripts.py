"""`.ci/gpu-wheels` and `.ci/gpu-run`, the prepared GPU lease: they parse, and the wheels follow setup.cfg's pins."""

from __future__ import annotations

import argparse
import configparser
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pixelqa.bench import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu-wheels", "gpu-run"])
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(ROOT / ".ci" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_wheels_take_their_versions_from_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = dict(line.strip().split("==", 1) for line in cfg["options"]["install_requires"].splitlines() if "==" in line)
    text = (ROOT / ".ci" / "gpu-wheels").read_text()
    pin_fn = next(line for line in text.splitlines() if line.startswith("pin()"))
    names = (
        "transformers",
        "tokenizers",
        "peft",
        "hydra-core",
        "omegaconf",
        "webdataset",
        "iopath",
        "xxhash",
        "orjson",
    )
    for name in names:
        assert f"$(pin {name})" in text, name
        done = subprocess.run(
            ["bash", "-c", f"{pin_fn}\npin {name}"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == pins[name], name
    done = subprocess.run(["bash", "-c", f"{pin_fn}\npin no-such-package"], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == ""  # an unknown name gives no version (pip then refuses "NAME==")


def bench_commands(text: str) -> list[list[str]]:
    """The `python3 -m pixelqa.bench ...` command lines of a script, continuations joined, shell arithmetic as 300."""
    joined = re.sub(r"\\\n\s*", " ", text)
    joined = re.sub(r"\$\(\([^)]*\)\)", "300", joined)
    commands = []
    for line in joined.splitlines():
        if "pixelqa.bench" in line:
            words = shlex.split(line[line.index("pixelqa.bench") :])
            commands.append(words[1:])
    return commands


def parse_bench(words: list[str]) -> argparse.Namespace:
    """Parse one benchmark's arguments as its own command line would, without running it."""
    name, *args = words
    assert name in BENCHMARKS, f"unknown benchmark {name!r}"
    return importlib.import_module(BENCHMARKS[name]).build_parser().parse_args(args)


def test_gpu_run_bench_commands_parse(capsys):
    # an argument error on the GPU machine costs a lease's minutes; it is caught here instead
    commands = bench_commands((ROOT / ".ci" / "gpu-run").read_text())
    assert sorted({c[0] for c in commands}) == ["evaluate", "gpu", "metrics", "predict"]
    assert len(commands) == 6
    for words in commands:
        try:
            args = parse_bench(words)
        except SystemExit:
            pytest.fail(f"`{' '.join(words)}` does not parse: {capsys.readouterr().err.strip()}")
        if words[0] == "gpu":
            assert {p for p in args.presets.split(",")} <= {"tiny", "unipixel-3b", "unipixel-7b"}, words
    # a wrong value or a misspelt option is refused the same way
    with pytest.raises(SystemExit):
        parse_bench(["gpu", "--presets", "unipixel-3b", "--precision", "fp16"])
    with pytest.raises(SystemExit):
        parse_bench(["predict", "--preset", "unipixel-3b", "--devices", "cuda"])
