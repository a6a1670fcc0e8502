"""What predict writes in OUT, atomically (a temporary folder renamed into place, replacing an earlier output whole):

answer.txt                     the answer text
masks.json                     per object, per frame: COCO RLE (pycocotools) of its (H, W) mask
Annotations/<media>/<frame>.png  palette PNGs in the DAVIS layout: pixel = object id + 1, 0 = background
                               (where objects overlap, the higher id is kept; masks.json keeps each whole);
                               <media> is a frames folder's name (`--media .`: the current folder's), a file's
                               stem, `media` for frames given in memory
overlays/<frame>.png           frame with each object blended, outlined and labelled `[id]`
overlay.gif, overlay.mp4       the overlays as an animation (videos only), as long as the source when fewer frames
                               than it holds were read (`--max-frames`): fps * frames read / frames in the video
run.json                       model, recipe, media, frames used, prompts, texts, objects, timings, files

run.json's media: `path` absolute, `path_given` as given; `declared_frames` (a video container's own count, null
when it gives none) beside `num_frames` (the frames that decode) and `warnings` (one line per sign of damage, file
skipped in a frames folder or page of an image file not read);
`exif_orientation` ({frame name: EXIF orientation} of the frames turned upright before use); for a video,
`video_orientation` (its display matrix in EXIF numbering, 1: none) and, for webm / mkv, `declared_seconds` beside
`decoded_seconds` (where the last frame ends). Its timings, in
seconds: `read_s` (probe and decode the media), `load_s` (load the model), `model_s` (the model's chat call),
`total_s` (the turn, `Predictor.run`, without the CLI's read and load) and, from the CLI, `end_to_end_s` (read +
load + turn; later chat turns: the turn only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pixelqa import viz
from pixelqa.files import (
    FolderNotReplaceable,
    FolderTaken,
    atomic_folder,
    protected_folder,
    replace_blocker,
    replaceable_folder,
)
from pixelqa.model.chat import Box, Mask, Point
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.media import MediaInfo, media_warnings
from pixelqa.predict.predictor import Prediction
from pixelqa.predict.progress import progress_bar


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / PASCAL VOC annotations (index bits spread over R, G, B high bits), flat."""
    flat: list[int] = []
    for i in range(256):
        rgb = [0, 0, 0]
        c = i
        for shift in range(7, -1, -1):  # the lowest three index bits set the highest colour bits, and so on
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        flat += rgb
    return flat


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an (H, W) bool mask with `counts` as text (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask of a COCO RLE written by `rle_encode`."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def id_map(masks: dict[int, np.ndarray], t: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 of frame t: object id + 1 where its mask is set (higher ids over lower), 0 elsewhere."""
    out = np.zeros(size, dtype=np.uint8)
    for k in sorted(masks):
        if k > 254:
            raise ValueError(f"object id: got {k}, expected <= 254 to fit a palette PNG")
        out[masks[k][t]] = k + 1
    return out


OUTPUT_NAMES = ("answer.txt", "masks.json", "Annotations", "overlays", "overlay.gif", "overlay.mp4", "run.json")


def is_output_name(name: str) -> bool:
    """Whether a name in OUT is one predict writes (a turn folder `turnN` of `--chat` included)."""
    return name in OUTPUT_NAMES or (name.startswith("turn") and name[4:].isdigit())


def check_out(out: str | Path) -> Path:
    """`out` as predict may write it: a new name, an empty folder or an earlier predict output (replaced whole, so
    no file of an earlier run is left beside the new ones); anything else is a PredictInputError naming --out."""
    if str(out) == "":  # Path("") is the current folder
        raise PredictInputError("--out: got an empty path, expected an output folder name")
    out = Path(out)
    if out.is_symlink():
        raise PredictInputError(
            f"--out: {str(out)!r} is a link; expected a folder name (a link is not followed: give the folder itself)"
        )
    if out.exists() and not out.is_dir():
        raise PredictInputError(f"--out: {str(out)!r} exists and is not a folder; expected a folder name")
    reason = protected_folder(out)  # an empty home or current folder would pass the next check, then be replaced
    if reason is not None:
        raise PredictInputError(f"--out: {str(out)!r} is {reason}; it is never replaced, choose a new folder")
    if not replaceable_folder(out, is_output_name):
        raise PredictInputError(
            f"--out: {str(out)!r} holds files predict did not write; expected a new folder, an empty one or an "
            "earlier predict output (it is replaced whole)"
        )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PredictInputError(f"--out: cannot create {str(out)!r}: {str(parent)!r} is not a writable folder")
    blocker = replace_blocker(out)  # a protected or foreign earlier output would fail only after the model ran
    if blocker is not None:
        raise PredictInputError(
            f"--out: {str(out)!r} cannot be replaced: {blocker}; expected a folder this user may rename and empty "
            "(or choose a new --out)"
        )
    return out


def describe_prompt(p: Point | Box | Mask) -> dict[str, Any]:
    """A JSON-ready description of a Point / Box / Mask (normalised coordinates, position among the frames)."""
    if isinstance(p, Point):
        return {"kind": "point", "object_id": p.object_id, "frame": p.frame, "xy": [p.x, p.y]}
    if isinstance(p, Box):
        return {"kind": "box", "object_id": p.object_id, "frame": p.frame, "xyxy": [p.x1, p.y1, p.x2, p.y2]}
    if isinstance(p, Mask):
        return {"kind": "mask", "object_id": p.object_id, "frame": p.frame, "rle": rle_encode(p.mask.cpu().numpy())}
    raise TypeError(f"prompt: got {type(p).__name__}, expected Point, Box or Mask")


def _overlay_drawer(masks: dict[int, np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """draw(frame, t): the (H, W, 3) frame t with every object blended, outlined and labelled `[id]` in its id's
    colour; frames are enlarged (pixels repeated) until the short side is at least 256, so labels stay legible."""
    ids = sorted(masks)
    if not ids:
        return lambda frame, t: frame
    colors = [viz.PALETTE[k % len(viz.PALETTE)] for k in ids]
    labels = [f"[{k}]" for k in ids]

    def draw(frame: np.ndarray, t: int) -> np.ndarray:
        stack = np.stack([masks[k][t] for k in ids])[:, None]  # (K, 1, H, W): one frame of viz's clip layout
        big, (stack,) = viz.upscale(frame[None], [stack], 256)  # small frames enlarged so labels stay legible
        thickness = max(1, min(big.shape[1:3]) // 256)
        return viz.overlay_masks(big[0], stack[:, 0], alpha=0.4, colors=colors, thickness=thickness, labels=labels)

    return draw


class _PngFrames(Sequence):
    """The overlay PNGs just written, read back one at a time when indexed (the GIF's frames, never all held)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))


def write_outputs(
    pred: Prediction,
    out: str | Path,
    prompt_args: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write every output of one turn into `out` (layout in the module docstring); returns the run.json dict.

    `prompt_args` are the prompts as typed on the command line (kept in run.json beside the normalised ones).
    """
    out = check_out(out)
    try:
        with atomic_folder(out) as tmp:
            return _write(pred, tmp, prompt_args, progress)
    except FolderTaken as exc:  # two predicts into one --out finishing at once: one line, not a traceback
        raise out_taken(exc) from None
    except FolderNotReplaceable as exc:  # its permissions changed while the model ran (check_out passed them)
        raise PredictInputError(f"--out: {exc}") from None


def out_taken(exc: FolderTaken) -> PredictInputError:
    """The one-line error of a predict whose --out another predict wrote at the same moment."""
    return PredictInputError(f"--out: {exc}; run again, or give each run its own --out")


def sequence_name(info: MediaInfo) -> str:
    """The DAVIS sequence folder of a media: a frames folder's own name (`.` and `seq.v2` named in full), a file's
    stem, `media` for frames given in memory or a name that would be empty (the root folder)."""
    if info.path == "<tensor>":
        return "media"
    path = Path(os.path.abspath(info.path))  # `.`, `..`, `seq/` named as the folder they are (links not followed)
    name = path.name if info.kind == "frames" else path.stem
    return name or "media"


def overlay_fps(info: MediaInfo, frames_read: int) -> float:
    """The frame rate of overlay.gif / overlay.mp4: the video's, times frames read / frames it holds when fewer were
    read (`--max-frames`), so the animation lasts as long as the video; 4 when the media has none (a frames folder)."""
    if not info.fps:
        return 4.0
    return info.fps * min(frames_read, info.num_frames) / max(info.num_frames, 1)


def _write(pred: Prediction, out: Path, prompt_args: list[str] | None, progress: bool) -> dict[str, Any]:
    """`write_outputs` into a fresh folder."""
    model_info = pred.model_info
    media = pred.media
    frames = media.frames.cpu()  # (T, 3, H, W) uint8; each frame is drawn and written in turn, none held twice
    masks = {k: np.asarray(m.cpu().numpy(), dtype=bool) for k, m in pred.memory.items()}  # every object in memory
    size = media.size
    seq = sequence_name(media.info)
    files: dict[str, Any] = {"answer": "answer.txt", "masks": "masks.json", "annotations": [], "overlays": []}
    (out / "answer.txt").write_text(pred.answer + "\n", encoding="utf-8")
    rles = {str(k): [rle_encode(m[t]) for t in range(len(frames))] for k, m in masks.items()}
    doc = {"size": list(size), "frames": media.names, "frame_ids": media.frame_ids, "objects": rles}
    (out / "masks.json").write_text(json.dumps(doc), encoding="utf-8")
    palette = davis_palette()
    draw = _overlay_drawer(masks)
    (out / "Annotations" / seq).mkdir(parents=True)
    (out / "overlays").mkdir()

    def drawn_frames() -> Iterator[np.ndarray]:
        """Each frame's overlay, after its annotation and overlay PNGs are written."""
        bar = progress_bar(progress, total=len(frames), desc="writing frames", unit="frame")
        try:
            for t, name in enumerate(media.names):
                png = Image.frombytes("P", (size[1], size[0]), id_map(masks, t, size).tobytes())  # indices as they are
                png.putpalette(palette)
                rel = f"Annotations/{seq}/{name}.png"
                png.save(out / rel, format="PNG")
                files["annotations"].append(rel)
                drawn = draw(frames[t].permute(1, 2, 0).numpy(), t)
                rel = f"overlays/{name}.png"
                viz.save_png(drawn, out / rel)
                files["overlays"].append(rel)
                bar.update(1)
                yield drawn
        finally:
            bar.close()

    if len(frames) > 1:
        fps = overlay_fps(media.info, len(frames))
        viz.save_mp4(drawn_frames(), out / "overlay.mp4", fps=fps)  # the PNGs are written as the video is
        pngs = _PngFrames([out / rel for rel in files["overlays"]])
        viz.save_gif(pngs, out / "overlay.gif", fps=fps)  # as long as the mp4: frames dropped past GIF's 25 fps
        files.update(gif="overlay.gif", mp4="overlay.mp4")
    else:
        for _ in drawn_frames():
            pass
    ids = media.frame_ids
    run = {
        "model": {k: v for k, v in model_info.items() if k != "recipe"},
        "recipe": model_info.get("recipe", {}),
        "media": {
            "path": media.info.path if media.info.path == "<tensor>" else str(Path(media.info.path).absolute()),
            "path_given": media.info.path,
            "kind": media.info.kind,
            "num_frames": media.info.num_frames,
            "declared_frames": media.info.declared_frames,
            "declared_seconds": media.info.declared_seconds,
            "decoded_seconds": media.info.decoded_seconds,
            "size": list(size),
            "fps": media.info.fps,
            "exif_orientation": media.meta.get("exif_orientation", {}),
            "video_orientation": media.info.orientation,
            "warnings": media_warnings(media.info),
        },
        "frames": {
            "read": ids,
            "names": media.names,
            "llm": [ids[p] for p in pred.llm_positions],
            "sam": [ids[p] for p in pred.sam_positions],
        },
        "prompts": [
            {**describe_prompt(p), "frame_id": ids[p.frame], **({"arg": prompt_args[i]} if prompt_args else {})}
            for i, p in enumerate(pred.prompts)
        ],
        "turn": pred.turn,
        "text_given": pred.text_given,
        "text": pred.text,
        "model_text": pred.model_text,
        "answer": pred.answer,
        "objects": {
            str(k): {
                "this_turn": k in pred.masks,
                "frames": [media.names[t] for t in range(len(frames)) if masks[k][t].any()],
            }
            for k in sorted(masks)
        },
        "timings": {k: round(v, 4) for k, v in pred.timings.items()},
        "files": files,
        "versions": {"torch": torch.__version__},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    return run
