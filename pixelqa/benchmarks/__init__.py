"""Benchmarks: timed comparisons printed as `name: value` lines (python -m pixelqa.bench <name>)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

COUNTS = ("repeats", "steps", "samples", "frames", "new_tokens", "prompt_tokens", "batch", "propagation_frames")


def argument_error(message: str) -> NoReturn:
    """A user error in a benchmark's arguments: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_common(args: argparse.Namespace, cuda: bool = True) -> None:
    """Checks every benchmark's arguments share: counts >= 1, an existing --path folder, and (with `cuda`) a visible
    CUDA device when --device names one."""
    import torch

    for name in COUNTS:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            argument_error(f"--{name.replace('_', '-')}: got {value}, expected an integer >= 1")
    path = getattr(args, "path", None)
    if path is not None and not Path(path).is_dir():
        argument_error(f"--path: {str(path)!r} is not a directory; expected a local model folder")
    device = getattr(args, "device", None)
    if cuda and isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        argument_error(f"--device: got {device!r}, but no CUDA device is visible here")
