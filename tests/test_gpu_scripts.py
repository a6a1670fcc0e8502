"""`.ci/gpu-wheels` and `.ci/gpu-run`, the prepared GPU lease: they parse, and the wheels follow setup.cfg's pins."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

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
