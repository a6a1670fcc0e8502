"""Build a pre-trained tiny base: `python -m pixelqa.tinybase --out DIR [--vit-steps N] [--vlm-steps N] [--sam-steps N]
[--what-share F] [--jobs 1|2]`.

Writes DIR/qwen/ (a Qwen2.5-VL base folder: config, safetensors weights, tokenizer, processors), DIR/sam2.1_micro.pt
(a SAM 2.1 checkpoint, `{"model": state_dict}` in float16) and DIR/card.json (settings, held-out figures, sha256 of
every file). DIR is replaced atomically at the end. Use it with `model.path=DIR/qwen
model.mask_decoder.checkpoint=DIR/sam2.1_micro.pt` (model=tiny). With `--jobs 2` the
SAM half trains in a second process while the VLM half trains in this one (one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixelqa.tinybase import CARD_FILE, QWEN_DIR, SAM_FILE
from pixelqa.tinybase.build import build
from pixelqa.tinybase.sam import SamSettings
from pixelqa.tinybase.vlm import VisionSettings, VlmSettings


def out_problem(out: Path) -> str | None:
    """Why the base cannot be written at `out` (None when it can): it replaces the folder whole, so the folder must be
    new, empty or an earlier base; a file there, or a path without a folder name (`.`), is refused."""
    from pixelqa.files import replaceable_folder

    if not out.resolve().name or out.name in ("", ".", ".."):
        return f"{str(out)!r} names no folder of its own; expected a new folder name, e.g. tinybase"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return f"{str(out)!r} exists and is not a folder; expected a new folder name"
    if not replaceable_folder(out, lambda name: name in (CARD_FILE, QWEN_DIR, SAM_FILE)):
        return (
            f"{str(out)!r} holds files a tiny base does not ({CARD_FILE}, {QWEN_DIR}/, {SAM_FILE}); expected a new "
            "folder, an empty one or an earlier base (it is replaced whole)"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    """Parse the options, build the base, print its card."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.tinybase", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="output folder: new, empty or an earlier base (replaced whole)"
    )
    ap.add_argument(
        "--vit-steps",
        type=int,
        default=VisionSettings.steps,
        help="steps of the ViT pre-training on dense shape labels, before the VLM's (default %(default)s)",
    )
    ap.add_argument(
        "--vlm-steps", type=int, default=VlmSettings.steps, help="steps of the VLM half (default %(default)s)"
    )
    ap.add_argument(
        "--sam-steps", type=int, default=SamSettings.steps, help="steps of the SAM half (default %(default)s)"
    )
    ap.add_argument(
        "--what-share",
        type=float,
        default=SamSettings.what_share,
        help="share of SAM's prompts that name what the object is rather than where (default %(default)s)",
    )
    ap.add_argument("--pool", type=int, default=None, help="distinct training samples of each half (default: each's)")
    ap.add_argument("--eval-samples", type=int, default=None, help="held-out samples of each half (default: each's)")
    ap.add_argument(
        "--jobs", type=int, default=2, help="1: both halves in turn; 2: in two processes (default %(default)s)"
    )
    args = ap.parse_args(argv)
    for name in ("vit_steps", "vlm_steps", "sam_steps", "pool", "eval_samples", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')}: got {value}, expected an integer >= 1", file=sys.stderr)
            sys.exit(2)
    if not 0.0 <= args.what_share <= 1.0:
        print(f"error: --what-share: got {args.what_share}, expected a number in [0, 1]", file=sys.stderr)
        sys.exit(2)
    problem = out_problem(args.out)
    if problem:  # before the minutes of training
        print(f"error: --out: {problem}", file=sys.stderr)
        sys.exit(2)
    vit = VisionSettings(steps=args.vit_steps)
    vlm, sam = VlmSettings(steps=args.vlm_steps), SamSettings(steps=args.sam_steps, what_share=args.what_share)
    if args.pool is not None:
        vit.pool = args.pool
    for s in (vlm, sam):
        if args.pool is not None:
            s.pool = args.pool
        if args.eval_samples is not None:
            s.eval_samples = args.eval_samples
        s.eval_every = min(s.eval_every, s.steps)
        s.warmup = min(s.warmup, max(1, s.steps // 10))
    card = build(args.out, vit, vlm, sam, min(args.jobs, 2))
    print(json.dumps({k: v for k, v in card.items() if k != "files"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
