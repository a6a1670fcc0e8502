"""Numerical parity with the official UniPixel: `python -m pixelqa.parity MODEL_DIR CASES_DIR`.

Runs our model, loaded from a released folder, on each recorded case of the official forward (`*.pt` files with
`inputs` and `outputs`, as in shared/data/unipixel-official-tiny/cases) and prints per case the max abs difference
of the logits, of the `<|seg|>` SAM prompts, of the mask logits, the number of mask pixels that differ, and
whether greedy generated ids are equal. The last line is `parity: ok` or `parity: FAIL` (exit status 0 / 1).
Tolerances (fp32 cases): logits <= 1e-4, SAM prompts and mask logits <= 1e-4, 0 differing mask pixels.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch, MemoryRef, VisualPrompt

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

LOGIT_TOL = 1e-4
MASK_TOL = 1e-4


@dataclass
class CaseReport:
    """Differences measured on one case; `failures` names every check over its tolerance."""

    name: str
    values: dict[str, float | int | bool | str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human-readable line."""
        parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.values.items()]
        verdict = "ok" if not self.failures else "FAIL (" + ", ".join(self.failures) + ")"
        return f"{self.name}: " + " ".join(parts) + f" -> {verdict}"


def load_case(path: Path) -> dict:
    """A recorded case, loaded without arbitrary unpickling."""
    try:
        case = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise ValueError(f"{path}: not a readable case file ({type(exc).__name__}: {exc})") from None
    if not isinstance(case, dict) or "inputs" not in case or "outputs" not in case:
        raise ValueError(f"{path}: expected a dict with 'inputs' and 'outputs'")
    return case


def _prompts(inputs: dict, image_size: int) -> list[VisualPrompt]:
    """Visual prompts from the official nesting (SAM-pixel coordinates, labels 1 = point, 2/3 = box corners)."""
    if "point_coords" not in inputs:
        return []
    coords, labels, frames = inputs["point_coords"][0], inputs["point_labels"][0], inputs["point_frames"][0]
    frames = torch.cat([torch.as_tensor(f).flatten() for f in frames]) if isinstance(frames, list) else frames
    out = []
    for j, (c, lab) in enumerate(zip(coords, labels)):
        xy = (c[0] / image_size).flatten().tolist()  # (N, 2) SAM pixels -> normalised
        kind = "point" if lab.numel() == 1 else "box"
        out.append(VisualPrompt(kind, int(frames[j]), tuple(xy)))
    return out


def _memory(inputs: dict) -> list[MemoryRef]:
    """Memory refs from the official `refer_mask` (T/2, O, h, w) cells, object-major then frame pair."""
    if "refer_mask" not in inputs:
        return []
    cells = inputs["refer_mask"][0]
    return [
        MemoryRef(o, 2 * g, None, cells[g, o])
        for o in range(cells.shape[1])
        for g in range(cells.shape[0])
        if bool(cells[g, o].any())
    ]


def case_batch(model: UniPixel, inputs: dict, input_ids: torch.Tensor | None = None) -> Batch:
    """Our Batch from a case's recorded processor tensors, frames and visual prompts."""
    ids = inputs["input_ids"] if input_ids is None else input_ids
    qcfg = model.qwen.config
    mm = torch.zeros_like(ids)
    mm[ids == qcfg.image_token_id] = 1
    mm[ids == qcfg.video_token_id] = 2
    frames = inputs["frames_uint8"].permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.full_like(ids, -100),
        mm_token_type_ids=mm,
        frames=[frames],
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        pixel_values_videos=inputs.get("pixel_values_videos"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        prompts=[_prompts(inputs, model.mask_decoder.image_size)],
        memory=[_memory(inputs)],
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of two tensors of one shape (inf if the shapes differ)."""
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.no_grad()
def check_forward(model: UniPixel, name: str, case: dict) -> CaseReport:
    """Teacher-forced forward of one case against its recorded outputs."""
    inputs, ref = case["inputs"], case["outputs"]
    report = CaseReport(name)
    prompts_seen: list[torch.Tensor] = []
    hook = model.l2m.register_forward_hook(lambda _m, _a, out: prompts_seen.append(out.detach()))
    try:
        out = model(case_batch(model, inputs))
    finally:
        hook.remove()
    logits = out.logits[0].float()
    ids = ref["logits_vocab_ids"]
    report.values["logits"] = max(
        _max_diff(logits[:, ids], ref["logits_at_ids"]), _max_diff(logits[-1], ref["logits_last"])
    )
    if report.values["logits"] > LOGIT_TOL:
        report.failures.append("logits")
    if ref["seg_token_positions"].numel():
        tokens = torch.cat(prompts_seen) if prompts_seen else torch.zeros(0)
        report.values["seg_prompts"] = _max_diff(tokens, ref["sam_hidden_prompts"])
        masks = out.pred_masks[0]
        report.values["mask_logits"] = _max_diff(masks, ref["mask_logits"])
        pixels = int(((masks > 0) != ref["masks"]).sum()) if masks.shape == ref["masks"].shape else -1
        report.values["mask_pixels"] = pixels
        for key in ("seg_prompts", "mask_logits"):
            if report.values[key] > MASK_TOL:
                report.failures.append(key)
        if pixels != 0:
            report.failures.append("mask_pixels")
    return report


@torch.no_grad()
def check_generate(model: UniPixel, name: str, case: dict) -> CaseReport:
    """Greedy generation of one case (prompts at every step are what the prefill sees) against recorded ids."""
    inputs, ref = case["inputs"], case["outputs"]
    want = ref["generated_ids"].flatten()
    ids = inputs["input_ids"]
    new: list[int] = []
    for _ in range(want.numel()):
        out = model(case_batch(model, inputs, ids), decode_masks=False)
        nxt = int(out.logits[0, -1].argmax())
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    report = CaseReport(name)
    report.values["generated_equal"] = new == want.tolist()
    report.values["generated"] = repr(model.tokenizer.decode(new))
    if not report.values["generated_equal"]:
        report.failures.append("generated_ids")
    return report


def run_parity(model: UniPixel, cases_dir: str | Path, names: list[str] | None = None) -> list[CaseReport]:
    """Every case of a folder (or the named ones) against the model; forward cases, then generation cases."""
    root = Path(cases_dir)
    files = sorted(root.glob("*.pt"))
    if names:
        files = [f for f in files if f.stem in names]
    if not files:
        raise ValueError(f"cases: no *.pt case file in {root}" + (f" named {names}" if names else ""))
    model.eval()
    reports = []
    for f in files:
        case = load_case(f)
        check = check_generate if "generated_ids" in case["outputs"] else check_forward
        reports.append(check(model, f.stem, case))
    return reports


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 parity ok, 1 parity failed, 2 user error)."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.parity", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a released UniPixel folder (config.json with model_type pixel_qwen2_5_vl)")
    parser.add_argument("cases_dir", help="folder of recorded official cases (*.pt)")
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args(argv)
    from pixelqa.quiet import silence_library_noise

    silence_library_noise()  # transformers' notes on a released config.json
    from pixelqa.model import release
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.unipixel import UniPixel

    try:
        if not Path(args.model_dir).is_dir():
            raise ValueError(f"model_dir: {args.model_dir!r} is not a directory; expected a released UniPixel folder")
        folder = release.inspect_folder("unipixel-3b", args.model_dir)
        if folder.kind != "release":
            raise release.ReleaseError(
                f"{folder.file('config.json')}: model_type={folder.config.get('model_type')!r}; parity needs a "
                f"released UniPixel folder (model_type {release.RELEASE_TYPE!r}), not a base model"
            )
        if not Path(args.cases_dir).is_dir():
            raise ValueError(f"cases_dir: {args.cases_dir!r} is not a directory")
        torch.manual_seed(0)
        model = UniPixel(UniPixelConfig(preset="unipixel-3b", path=args.model_dir))
        reports = run_parity(model, args.cases_dir, args.case)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in reports:
        print(r.line())
    ok = all(not r.failures for r in reports)
    print("parity: ok" if ok else "parity: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
