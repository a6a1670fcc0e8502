"""Benchmarks: `python -m pixelqa.bench metrics|model|data|gpu|predict|evaluate [options]`.

Each benchmark measures PixelQA and its baseline in the same run and prints ratios; its last lines are its
headline figures, one per line, as `name: value`.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, str] = {
    "metrics": "pixelqa.benchmarks.metrics",
    "model": "pixelqa.benchmarks.model",
    "data": "pixelqa.benchmarks.data",
    "gpu": "pixelqa.benchmarks.gpu",
    "predict": "pixelqa.benchmarks.predict",
    "evaluate": "pixelqa.benchmarks.evaluate",
}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark named by the first argument with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in BENCHMARKS:
        given = f" (got {args[0]!r})" if args and args[0] not in ("-h", "--help") else ""
        print(f"usage: python -m pixelqa.bench {{{'|'.join(BENCHMARKS)}}} [options]{given}", file=sys.stderr)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    importlib.import_module(BENCHMARKS[args[0]]).main(args[1:])


if __name__ == "__main__":
    main()
