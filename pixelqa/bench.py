"""Benchmarks: `python -m pixelqa.bench metrics|model|data|gpu|predict|evaluate|footprint [options]`.

Each benchmark measures PixelQA and its baseline in the same run and prints ratios; its last lines are its
headline figures, one per line, as `name: value`.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

BENCHMARKS: dict[str, str] = {
    "metrics": "pixelqa.benchmarks.metrics",
    "model": "pixelqa.benchmarks.model",
    "data": "pixelqa.benchmarks.data",
    "gpu": "pixelqa.benchmarks.gpu",
    "predict": "pixelqa.benchmarks.predict",
    "evaluate": "pixelqa.benchmarks.evaluate",
    "footprint": "pixelqa.benchmarks.footprint",
}

# One line each for `--help` (written here, so that help imports no benchmark; see each module's docstring)
SUMMARIES: dict[str, str] = {
    "metrics": "DAVIS J / F / J&F: our torch metrics vs the per-frame numpy/OpenCV reference",
    "model": "one UniPixel training step vs a plain Qwen2.5-VL step on the same batch",
    "data": "shard build throughput, and shard loading vs a raw JSON + image-file baseline",
    "gpu": "every real-size figure in one command, for a few minutes of a CUDA machine",
    "predict": "inference: cached vs uncached generation, SAM propagation, the two-pass turn",
    "evaluate": "samples per second of the paper suite's official protocols",
    "footprint": "predict's memory a pixel and a pixel per object, against what its memory check assumes",
}
HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    """The usage line and one line per benchmark."""
    width = max(map(len, BENCHMARKS))
    about = textwrap.fill(" ".join(__doc__.split("\n\n")[1].split()), 100)
    lines = [f"usage: python -m pixelqa.bench {{{'|'.join(BENCHMARKS)}}} [options]", "", about, ""]
    lines += ["benchmarks:"] + [f"  {name:<{width}}  {SUMMARIES[name]}" for name in BENCHMARKS]
    lines += ["", "python -m pixelqa.bench NAME --help lists a benchmark's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark named by the first argument with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in HELP_FLAGS:
        print(usage())
        raise SystemExit(0)
    if not args or args[0] not in BENCHMARKS:
        given = f" (got {args[0]!r})" if args else ""
        print(f"usage: python -m pixelqa.bench {{{'|'.join(BENCHMARKS)}}} [options]{given}", file=sys.stderr)
        raise SystemExit(2)
    from pixelqa.quiet import silence_library_noise

    silence_library_noise()  # the figures, not transformers' deprecation notes (PIXELQA_LIBRARY_WARNINGS=1 shows them)
    importlib.import_module(BENCHMARKS[args[0]]).main(args[1:])


if __name__ == "__main__":
    main()
