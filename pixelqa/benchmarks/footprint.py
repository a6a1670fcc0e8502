"""predict's memory benchmark: `python -m pixelqa.bench footprint [--sizes 640x360,1280x720] [--frames 150,300]`.

Runs `python -m pixelqa.predict` on synthetic videos (PyAV, mpeg4) of two lengths and one and two prompts, each run
a process of its own that reports its own peak resident memory (VmHWM) at exit. The difference between the two
lengths is what the frames and masks take, whatever the model and the libraries take: bytes a pixel of every frame
read with one object, and the bytes each further object adds. These are what `pixelqa.predict.footprint` assumes
when it refuses a run that would not fit (its constants, printed beside them): a measured figure above the assumed
one means that check lets through runs that do not fit. Measured on the tiny model; the model's own memory is left
out by the difference, so the figures hold for any model whose SAM output is the media's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pixelqa.benchmarks import argument_error
from pixelqa.predict.footprint import BYTES_PER_PIXEL, BYTES_PER_PIXEL_PER_OBJECT


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W) of even sizes >= 16 (the synthetic video's codec needs even sides)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        argument_error(f"--sizes: got {text!r}, expected WIDTHxHEIGHT such as 640x360")
    if w < 16 or h < 16 or w % 2 or h % 2:
        argument_error(f"--sizes: got {text!r}, expected even sides of at least 16 pixels")
    return h, w


def write_clip(path: Path, frames: int, size: tuple[int, int]) -> None:
    """A `frames`-frame mpeg4 video of `size` (H, W): a dark background, a red block moving right, a green block."""
    import av

    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = np.full((h, w, 3), 40, np.uint8)
            x = (t * max(w // 100, 1)) % max(w - w // 4, 1)
            img[h // 8 : h // 3, x : x + w // 4] = (200, 30, 30)
            img[h // 2 : h // 2 + h // 6, w // 2 : w // 2 + w // 8] = (30, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def prompt_args(size: tuple[int, int], objects: int) -> list[str]:
    """One prompt per object on frame 0: a point on the moving block, then boxes around the still one."""
    h, w = size
    args = ["--point", f"{w // 8},{h // 4}"]
    for _ in range(objects - 1):
        args += ["--box", f"{w // 2},{h // 2},{w // 2 + w // 8},{h // 2 + h // 6}"]
    return args


# Run in the child: its own peak (VmHWM, the high-water mark of the memory its program mapped) is written at exit. The
# kernel's ru_maxrss of a child counts the parent's memory it was forked with, before it ran anything.
_REPORT_PEAK = """
import atexit, os, runpy, sys

def _report():
    with open('/proc/self/status') as status:
        peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
    with open(os.environ['PIXELQA_PEAK_FILE'], 'w') as out:
        out.write(peak)

atexit.register(_report)
kind, target = sys.argv[1:3]
sys.argv = [target, *sys.argv[3:]]
if kind == '-m':
    runpy.run_module(target, run_name='__main__', alter_sys=True)
else:
    exec(compile(target, '<string>', 'exec'), {'__name__': '__main__'})
"""


def peak_rss(args: list[str]) -> int:
    """Peak resident memory in bytes of `python ARGS` (ARGS: `-m module ...` or `-c code ...`) run as a child
    process: its own, measured from inside it at exit (Linux)."""
    if len(args) < 2 or args[0] not in ("-m", "-c"):
        raise ValueError(f"args: got {args[:2]}, expected ['-m', module, ...] or ['-c', code, ...]")
    with tempfile.TemporaryDirectory(prefix="pixelqa-peak-") as tmp:
        report, err = Path(tmp) / "peak", Path(tmp) / "stderr"
        env = {**os.environ, "PIXELQA_PEAK_FILE": str(report)}
        with open(err, "wb") as err_file:  # a file, not a pipe: a child filling a pipe nobody reads would hang
            done = subprocess.run(
                [sys.executable, "-c", _REPORT_PEAK, *args],
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                env=env,
                check=False,
            )
        if done.returncode != 0 or not report.exists():
            said = err.read_text(errors="replace").strip()[-500:]
            raise RuntimeError(f"python {' '.join(args[:3])} ... exited with {done.returncode}: {said}")
        return int(report.read_text()) * 1024  # kB in /proc


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench footprint`."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.bench footprint")
    ap.add_argument("--sizes", default="640x360", help="frame sizes WxH, comma-separated (default %(default)s)")
    ap.add_argument(
        "--frames", default="150,300", help="the two video lengths whose difference is measured (default %(default)s)"
    )
    ap.add_argument("--objects", type=int, default=2, choices=[1, 2], help="up to this many prompts (default 2)")
    ap.add_argument("--model", default="tiny", help="predict's --model (default %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; the last lines are `name: value`."""
    args = build_parser().parse_args(argv)
    try:
        lengths = [int(v) for v in args.frames.split(",")]
    except ValueError:
        argument_error(f"--frames: got {args.frames!r}, expected two frame counts such as 150,300")
    if len(lengths) != 2 or not 1 <= lengths[0] < lengths[1]:
        argument_error(f"--frames: got {args.frames!r}, expected two frame counts, the first >= 1 and smaller")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="pixelqa-footprint-") as tmp:
        for size in sizes:
            per_object: dict[int, float] = {}
            for objects in range(1, args.objects + 1):
                peaks = []
                for n in lengths:
                    clip = Path(tmp) / f"clip_{size[1]}x{size[0]}_{n}.mp4"
                    if not clip.exists():
                        write_clip(clip, n, size)
                    argv_ = ["-m", "pixelqa.predict", "--model", args.model, "--media", str(clip)]
                    argv_ += [*prompt_args(size, objects), "--text", "What is it doing?", "--max-new-tokens", "8"]
                    argv_ += ["--out", str(Path(tmp) / "out"), "--no-memory-check", "--no-progress"]
                    peaks.append(peak_rss(argv_))
                    print(f"{size[1]}x{size[0]} {n} frames, {objects} object(s): peak {peaks[-1] / 2**30:.2f} GiB")
                pixels = (lengths[1] - lengths[0]) * size[0] * size[1]
                per_object[objects] = (peaks[1] - peaks[0]) / pixels
            tag = f"{size[1]}x{size[0]}"
            one = per_object[1]
            assumed_one = BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_OBJECT
            print(f"footprint_{tag}_bytes_per_pixel_one_object: {one:.2f} (the check assumes {assumed_one})")
            worst = max(worst, one / assumed_one)
            if 2 in per_object:
                extra = per_object[2] - one
                print(
                    f"footprint_{tag}_bytes_per_pixel_per_further_object: {extra:.2f} (the check assumes "
                    f"{BYTES_PER_PIXEL_PER_OBJECT})"
                )
                worst = max(worst, per_object[2] / (BYTES_PER_PIXEL + 2 * BYTES_PER_PIXEL_PER_OBJECT))
    # above 1: a run the check lets through can take more memory than it assumed
    print(f"footprint_measured_vs_assumed_worst: {worst:.2f}x")


if __name__ == "__main__":
    main()
