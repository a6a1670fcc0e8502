"""Builders of tiny video datasets in their real on-disk formats (JSON, palette PNG, RLE, mp4), for converter tests.

Each builder writes files under a folder and returns the ground truth it drew, so tests can compare the
converted samples with values that never went through the converter.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 24, 32


def rgb_frames(n: int, seed: int = 0, h: int = H, w: int = W) -> list[np.ndarray]:
    """n random (h, w, 3) uint8 frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def box_mask(t: int, obj: int, h: int = H, w: int = W) -> np.ndarray:
    """A deterministic rectangle for object `obj` on frame `t` (moves right by one pixel per frame)."""
    m = np.zeros((h, w), dtype=bool)
    y0 = 2 + 8 * (obj - 1)
    x0 = 2 + t + 10 * (obj - 1)
    m[y0 : y0 + 5, x0 : x0 + 6] = True
    return m


def coco_rle(mask: np.ndarray) -> dict:
    """A COCO RLE with str counts, as the JSON releases store it."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def write_jpegs(folder: Path, names: list[str], frames: list[np.ndarray]) -> None:
    """Write frames as JPEG files <folder>/<name>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, f in zip(names, frames):
        cv2.imwrite(str(folder / f"{n}.jpg"), f[:, :, ::-1])


def write_palette_png(path: Path, label: np.ndarray) -> None:
    """A palette ('P' mode) PNG whose indices are `label`, like DAVIS / YouTube-VOS annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [0] * (256 * 3 - 12)
    im.putpalette(palette)
    im.save(path)


def write_json(path: Path, data) -> None:
    """Write JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = 24.0) -> None:
    """An mp4 (mp4v) of RGB frames through cv2.VideoWriter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened(), "cv2.VideoWriter could not open an mp4v writer"
    for f in frames:
        vw.write(np.ascontiguousarray(f[:, :, ::-1]))
    vw.release()


def flat_frames(n: int, h: int = H, w: int = W) -> list[np.ndarray]:
    """Frames of one flat grey level each (10, 34, 58, ...; up to 10 frames): robust to video compression."""
    return [np.full((h, w, 3), 10 + 24 * t, dtype=np.uint8) for t in range(n)]


# ------------------------------------------------------------------------------------------ VOS family


def build_palette_vos(
    root: Path, split: str, layout: str = "ytvos", with_pngs: bool = True, pickle_masks: bool = False
) -> dict:
    """Ref-YouTube-VOS (layout 'ytvos') or Ref-DAVIS17 (layout 'davis') files for one split.

    Video 'vidA' has 3 frames and objects 1, 2 (object 2 absent from frame 2); 'vidB' 2 frames, object 1.
    The PNG of frame 1 of vidA is left out (not annotated). Returns {(vid, exp_id): {frame: mask}}.
    """
    videos = {"vidA": (["00000", "00005", "00010"], [1, 2]), "vidB": (["00000", "00005"], [1])}
    meta = {"videos": {}}
    truth: dict = {}
    pkl: dict = {}
    n_exp = 0
    for vi, (vid, (names, objs)) in enumerate(videos.items()):
        frames = rgb_frames(len(names), seed=vi)
        if layout == "davis":
            write_jpegs(root / "DAVIS" / "JPEGImages" / "480p" / vid, names, frames)
            ann = root / "DAVIS" / "Annotations" / "480p" / vid
        else:
            write_jpegs(root / split / "JPEGImages" / vid, names, frames)
            ann = root / split / "Annotations" / vid
        labels = []
        for t in range(len(names)):
            lab = np.zeros((H, W), dtype=np.uint8)
            for o in objs:
                if not (o == 2 and t == 2):
                    lab[box_mask(t, o)] = o
            labels.append(lab)
            if with_pngs and not (vid == "vidA" and t == 1):
                write_palette_png(ann / f"{names[t]}.png", lab)
        exps = {}
        per_obj = 4 if layout == "davis" else 1
        for o in objs:
            for k in range(per_obj):
                exp_id = str(len(exps))
                exps[exp_id] = {"exp": f"the thing number {o} of {vid} ({k})", "obj_id": str(o)}
                if with_pngs:
                    truth[(vid, exp_id)] = {
                        t: labels[t] == o for t in range(len(names)) if not (vid == "vidA" and t == 1)
                    }
                else:
                    truth[(vid, exp_id)] = {t: labels[t] == o for t in range(len(names))}
                pkl[str(n_exp)] = [
                    coco_rle(labels[t] == o) if (labels[t] == o).any() else None for t in range(len(names))
                ]
                n_exp += 1
        meta["videos"][vid] = {"expressions": exps, "frames": names}
    write_json(root / "meta_expressions" / split / "meta_expressions.json", meta)
    if pickle_masks:
        target = root / split / "mask_dict.pkl" if layout == "davis" else root / "mask_dict.pkl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            pickle.dump(pkl, f)
    return truth


def stripe_mask(vid_index: int, exp: int, h: int = H, w: int = W) -> np.ndarray:
    """A mask unique to (video, expression): column stripe 2*exp of width 2, rows shifted per video."""
    m = np.zeros((h, w), dtype=bool)
    m[2 * vid_index : 2 * vid_index + 6, 2 * exp : 2 * exp + 2] = True
    return m


def build_repacked_pickle_vos(root: Path, dataset: str, split: str, protocol: int = 2) -> dict:
    """UniPixel-SFT-1M's re-pack of Ref-DAVIS17 ('davis') or Ref-YouTube-VOS ('ytvos'): JPEG frames, the
    meta_expressions JSON and a mask_dict.pkl numbered over sorted video ids x sorted expression ids as strings.

    Video 'zebra' (listed first in the JSON) has 12 expressions "0".."11" (ids "10", "11" sort before "2") and
    video 'alpaca' 2; each expression's mask is a stripe unique to it on every frame. The pickle holds RLEs
    with bytes counts, as pycocotools returns them, pickled with `protocol`. Returns {(vid, exp_id): mask}.
    """
    videos = {"zebra": 12, "alpaca": 2}  # file order is not sorted order
    names = ["00000", "00005"]
    meta: dict = {"videos": {}}
    truth: dict = {}
    for vi, (vid, n) in enumerate(videos.items()):
        frame_dir = (
            root / "DAVIS" / "JPEGImages" / "480p" / vid if dataset == "davis" else root / split / "JPEGImages" / vid
        )
        write_jpegs(frame_dir, names, rgb_frames(len(names), seed=vi))
        exps = {str(e): {"exp": f"expression {e} of {vid}", "obj_id": str(e // 4 + 1)} for e in range(n)}
        meta["videos"][vid] = {"expressions": exps, "frames": names}
        for e in range(n):
            truth[(vid, str(e))] = stripe_mask(vi, e)
    write_json(root / "meta_expressions" / split / "meta_expressions.json", meta)
    pkl: dict = {}
    for vid in sorted(meta["videos"]):
        for exp_id in sorted(meta["videos"][vid]["expressions"]):  # string order: "0", "1", "10", "11", "2", ...
            rle = mask_utils.encode(np.asfortranarray(truth[(vid, exp_id)].astype(np.uint8)))
            pkl[str(len(pkl))] = [rle for _ in names]
    target = root / split / "mask_dict.pkl" if dataset == "davis" else root / "mask_dict.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps(pkl, protocol=protocol))
    return truth


def build_mask_dict_vos(
    root: Path,
    meta_path: Path,
    mask_path: Path | None,
    frame_root: Path,
    expressions: dict | None = None,
    vid_names: tuple[str, ...] = ("v1", "v2"),
    extra_video_fields: dict | None = None,
) -> dict:
    """A MeViS-style split: meta JSON (obj_id/anno_id lists) + mask_dict.json + JPEG folders.

    Each video has 3 frames and two instances (anno ids 2*i, 2*i+1); instance b is absent (null) on frame 0.
    Default expressions per video: one per instance, one for both, one with no object.
    Returns {(vid, exp_id): {frame: union mask}} and writes the files.
    """
    meta = {"videos": {}}
    mask_dict: dict = {}
    truth: dict = {}
    names = ["00000", "00001", "00002"]
    for vi, vid in enumerate(vid_names):
        write_jpegs(frame_root / vid, names, rgb_frames(3, seed=10 + vi))
        a, b = 2 * vi, 2 * vi + 1
        inst = {a: [box_mask(t, 1) for t in range(3)], b: [box_mask(t, 2) if t > 0 else None for t in range(3)]}
        for aid, ms in inst.items():
            mask_dict[str(aid)] = [coco_rle(m) if m is not None else None for m in ms]
        exps = expressions or {
            "0": {"exp": "the first box", "obj_id": [0], "anno_id": [a]},
            "1": {"exp": "the second box", "obj_id": [1], "anno_id": [b]},
            "2": {"exp": "both boxes moving right", "obj_id": [0, 1], "anno_id": [a, b]},
            "3": {"exp": "a purple elephant", "obj_id": [], "anno_id": []},
        }
        exps = json.loads(json.dumps(exps).replace('"__A__"', str(a)).replace('"__B__"', str(b)))
        for eid, e in exps.items():
            u = [np.zeros((H, W), bool) for _ in range(3)]
            for aid in e["anno_id"]:
                for t in range(3):
                    if inst[int(aid)][t] is not None:
                        u[t] |= inst[int(aid)][t]
            truth[(vid, eid)] = {t: u[t] for t in range(3)}
        meta["videos"][vid] = {"expressions": exps, "frames": names, **(extra_video_fields or {})}
    write_json(meta_path, meta)
    if mask_path is not None:
        write_json(mask_path, mask_dict)
    return truth


def build_revos(root: Path) -> dict:
    """ReVOS: meta_expressions_{train,valid}_.json with type_id, shared mask_dict.json and foreground dict."""
    exps = {
        "0": {"exp": "the first box", "obj_id": [0], "anno_id": ["__A__"], "type_id": 0},
        "1": {"exp": "Which box enters the scene late?", "obj_id": [1], "anno_id": ["__B__"], "type_id": 1},
        "2": {"exp": "the flying saucer", "obj_id": [], "anno_id": [], "type_id": 0},
    }
    truth = {}
    for split, vids in (("train", ("t1",)), ("valid", ("v1",))):
        truth.update(
            build_mask_dict_vos(
                root,
                root / f"meta_expressions_{split}_.json",
                root / f"_mask_{split}.json",
                root / "JPEGImages",
                exps,
                vids,
                {"height": H, "width": W},
            )
        )
    # One mask dict for both splits, as the release ships it.
    merged = {}
    for split in ("train", "valid"):
        merged.update(json.loads((root / f"_mask_{split}.json").read_text()))
        (root / f"_mask_{split}.json").unlink()
    # t1 and v1 both used anno ids 0/1 (vi = 0): the same masks, so merging is consistent.
    write_json(root / "mask_dict.json", merged)
    fg = {}
    for vid in ("t1", "v1"):
        fg[vid] = {
            "masks_rle": [coco_rle(box_mask(t, 1) | (box_mask(t, 2) if t > 0 else False)) for t in range(3)],
            "foreground_ratio": [0.1, 0.1, 0.1],
        }
    write_json(root / "mask_dict_foreground.json", fg)
    return truth


def build_ref_sav_train(root: Path, n_video_frames: int = 10) -> dict:
    """Ref-SAV train: expressions JSON + an SA-V mp4 (flat grey frames) + its manual masklet JSON.

    The masklet has one entry per 4th frame (0, 4, 8) and two objects. Returns {obj: {position: mask}}.
    """
    vid = "sav_000001"
    write_mp4(root / "sav" / "sav_train" / "sav_000" / f"{vid}.mp4", flat_frames(n_video_frames))
    n_ann = (n_video_frames + 3) // 4
    masklet = [
        [coco_rle(box_mask(k, 1)), coco_rle(box_mask(k, 2) if k != 1 else np.zeros((H, W), bool))] for k in range(n_ann)
    ]
    write_json(
        root / "sav" / "sav_train" / "sav_000" / f"{vid}_manual.json",
        {"video_id": vid, "masklet": masklet, "video_height": H, "video_width": W, "masklet_num": 2},
    )
    write_json(
        root / "Ref-SAV.json",
        {
            vid: {
                "video_path": f"anything/sav_train/sav_000/{vid}.mp4",
                "anno_path": f"anything/sav_train/sav_000/{vid}_manual.json",
                "objects": {
                    "0": {"video_id": vid, "obj_id": 0, "formated": "A red box sliding to the right."},
                    "1": {"video_id": vid, "obj_id": 1, "formated": "The lower box, which vanishes briefly."},
                },
            }
        },
    )
    return {
        o: {k: (box_mask(k, o) if not (o == 2 and k == 1) else np.zeros((H, W), bool)) for k in range(n_ann)}
        for o in (1, 2)
    }


def build_groundmore(root: Path) -> dict:
    """GroundMoRe: questions JSON + images/ + palette masks/ for one video of 5 frames (masks on frames 1, 3)."""
    vid = "vid_0001"
    names = [f"frame{i}" for i in range(5)]
    write_jpegs(root / "annotations" / vid / "images", names, rgb_frames(5, seed=3))
    labels = {}
    for t in (1, 3):
        lab = np.zeros((H, W), np.uint8)
        lab[box_mask(t, 1)] = 1
        lab[box_mask(t, 2)] = 2
        labels[t] = lab
        write_palette_png(root / "annotations" / vid / "masks" / f"{names[t]}.png", lab)
    q = {
        "videos": {
            vid: {
                "questions": {
                    "q0": {
                        "question": "Who is pushing the cart",
                        "answer": "the man",
                        "q_type": "Causal",
                        "obj_id": "1",
                    },
                    "q1": {
                        "question": "What moves after the man leaves?",
                        "answer": "the two carts",
                        "q_type": "Sequential",
                        "obj_id": "1, 2",
                    },
                }
            },
            "vid_missing": {"questions": {}},
        }
    }
    write_json(root / "trainval_v2.json", q)
    write_json(root / "test_v2.json", q)
    return labels


def build_vicas(root: Path) -> dict:
    """ViCaS v0.1: one video (id 7) with 2 annotated frames, tracks 3 and 5 (5 missing on frame 0)."""
    vid = "000007"
    names = ["00000.jpg", "00004.jpg"]
    write_jpegs(root / "video_frames" / vid, [n[:-4] for n in names], rgb_frames(2, seed=4))
    segs = [
        {"filename": names[0], "track_ids": [3], "mask_rles": [coco_rle(box_mask(0, 1))]},
        {"filename": names[1], "track_ids": [5, 3], "mask_rles": [coco_rle(box_mask(1, 2)), coco_rle(box_mask(1, 1))]},
    ]
    write_json(
        root / "annotations" / "v0.1" / f"{vid}.json",
        {
            "filename": f"{vid}_clip.mp4",
            "segmentations": segs,
            "caption_parsed_en_gpt": "Two boxes slide.",
            "object_referrals": [
                {"prompt": "the upper box", "track_ids": [3]},
                {"prompt": "all boxes", "track_ids": [3, 5]},
            ],
        },
    )
    write_json(root / "splits" / "v0.1" / "train.json", [7])
    return {"0": {0: box_mask(0, 1), 1: box_mask(1, 1)}, "1": {0: box_mask(0, 1), 1: box_mask(1, 1) | box_mask(1, 2)}}


# ------------------------------------------------------------------------------------------ VideoRefer


def videorefer_annotation(objs_frames: dict[int, list[int]]) -> list[dict]:
    """The VideoRefer 'annotation' list: per object {frame index: {"segmentation": RLE}} of box_mask(frame, obj)."""
    return [{str(f): {"segmentation": coco_rle(box_mask(f, o))} for f in frames} for o, frames in objs_frames.items()]


def build_videorefer_700k(root: Path) -> None:
    """VideoRefer-700K: short caption, detailed caption and QA JSONs + two 10-frame mp4s under videos/."""
    write_mp4(root / "videos" / "clipA.mp4", flat_frames(10))
    write_mp4(root / "videos" / "sub" / "clipB.mp4", flat_frames(10))
    short = [
        {
            "id": "s0",
            "video": "clipA.mp4",
            "annotation": videorefer_annotation({1: [3]}),
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is <region> in the video?"},
                {"from": "gpt", "value": "A small box."},
            ],
        },
        {
            "id": "s1",
            "video": "sub/clipB.mp4",
            "annotation": videorefer_annotation({1: [1]}),
            "ratio": 0.1,
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is <region>?"},
                {"from": "gpt", "value": "Dropped by the ratio filter."},
            ],
        },
    ]
    write_json(root / "videorefer-short-caption-500k.json", short)
    detailed = [
        {
            "id": "d0",
            "video": "sub/clipB.mp4",
            "annotation": videorefer_annotation({1: [2, 4, 6]}),
            "conversations": [
                {"from": "human", "value": "Describe <region> in detail.\n<video>"},
                {"from": "gpt", "value": "A box that slides to the right at a steady pace."},
            ],
        }
    ]
    write_json(root / "videorefer-detailed-caption-125k.json", detailed)
    qa = [
        {
            "id": "q0",
            "video": "clipA.mp4",
            "annotation": videorefer_annotation({1: [0, 4], 2: [4, 8]}),
            "conversations": [
                {
                    "from": "human",
                    "value": "<video>\nThere are 2 objects in the video: <object0><region>, "
                    "<object1><region>.\nDoes <object0> move faster than <object1>?",
                },
                {"from": "gpt", "value": "No, <object0> moves as fast as <object1>."},
            ],
        },
        {
            "id": "q1",
            "video": "clipA.mp4",
            "annotation": videorefer_annotation({1: [5]}),
            "conversations": [
                {"from": "human", "value": "<video>\nWhat colour is <region>?"},
                {"from": "gpt", "value": "Grey."},
            ],
        },
    ]
    write_json(root / "videorefer-qa-75k.json", qa)


def build_videorefer_bench(root: Path) -> None:
    """VideoRefer-Bench-Q (one multi-object, one single-object question) and -D, videos under videos/."""
    write_mp4(root / "videos" / "clipA.mp4", flat_frames(10))
    write_mp4(root / "videos" / "Panda-70M-part" / "clipD.mp4", flat_frames(10))
    q = [
        {
            "video": "clipA.mp4",
            "type": "Relationship Question",
            "frame_idx": "4",
            "Question": "<object0><region> and <object1><region> are boxes. Which is higher, <object0> or <object1>?",
            "options": ["(A) <object0>", "(B) <object1>", "(C) Neither", "(D) Both"],
            "Answer": "(A) <object0>",
            "annotation": videorefer_annotation({1: [0, 4, 8], 2: [4, 8]}),
        },
        {
            "video": "clipA.mp4",
            "type": "Basic Questions",
            "frame_idx": "2",
            "Question": "What shape is <region>?",
            "options": ["(A) Circle", "(B) Rectangle"],
            "Answer": "(B) Rectangle",
            "annotation": videorefer_annotation({1: [2, 6]}),
        },
    ]
    write_json(root / "VideoRefer-Bench-Q.json", q)
    d = [
        {
            "video": "clipD.mp4",
            "caption": "A box slides right.",
            "frame_idx": "3",
            "annotation": videorefer_annotation({1: [3, 7]}),
        }
    ]
    write_json(root / "VideoRefer-Bench-D.json", d)


def build_videorefer_bench_tags_and_defects(root: Path) -> dict[int, str]:
    """VideoRefer-Bench-Q entries as the release writes them, good and bad; returns {entry: what is wrong}.

    0: the benchmark's first-question form, a single object tagged ``<object3><region>``;
    1: two objects tagged in the order ``<object2>``, ``<object0>`` (annotation j is box_mask(f, j + 1));
    2: a key frame (5) where the object has no mask (annotated on 2 and 6), bad only for single-frame / PixelQA;
    3: a polygon region wholly outside the 32x24 image; 4: an empty region (all-zero RLE);
    5: a broken region marker (one tag for two annotations).
    """
    write_mp4(root / "videos" / "clipA.mp4", flat_frames(10))
    opts, ans = ["(A) Walking", "(B) Sitting"], "(A) Walking"
    empty = {"2": {"segmentation": coco_rle(np.zeros((H, W), dtype=bool))}}
    outside = {"2": {"segmentation": [[100.0, 100.0, 120.0, 100.0, 120.0, 120.0]]}}
    q = [
        {
            "Question": "What is <object3><region> doing?",
            "annotation": videorefer_annotation({1: [2, 4]}),
            "frame_idx": "4",
        },
        {
            "Question": "Is <object2><region> left of <object0><region>? Compare <object2> and <object0>.",
            "annotation": videorefer_annotation({1: [4], 2: [4, 6]}),
            "frame_idx": "4",
        },
        {"Question": "What is <region> doing?", "annotation": videorefer_annotation({1: [2, 6]}), "frame_idx": "5"},
        {"Question": "What is <region> doing?", "annotation": [outside], "frame_idx": "2"},
        {"Question": "What is <region> doing?", "annotation": [empty], "frame_idx": "2"},
        {
            "Question": "Is <object0><region> near the other one?",
            "annotation": videorefer_annotation({1: [4], 2: [4]}),
            "frame_idx": "4",
        },
    ]
    for e in q:
        e.update({"video": "clipA.mp4", "type": "Basic Questions", "options": opts, "Answer": ans})
    write_json(root / "VideoRefer-Bench-Q.json", q)
    return {2: "key frame", 3: "outside the image", 4: "empty region", 5: "tags"}


# ------------------------------------------------------------------------------------------ Inst-IT


def build_instit(root: Path) -> dict:
    """Inst-IT image + video JSONs ('_w_mask' release) with raw images / frame folders.

    Image 'img1': instances 1, 2 (2 has an empty short caption). Video 'vid1': 3 PNG frames named
    1.png, 2.png, 10.png (numeric order differs from lexical), instances 1, 2; instance 2 not on frame 0.
    """
    write_jpegs(root / "images_raw" / "coco", ["img1"], rgb_frames(1, seed=5))
    write_json(
        root / "inst_it_dataset_image_51k_w_mask.json",
        [
            {
                "image_id": "img1",
                "image_path": "images_vpt/coco/img1.jpg",
                "instance_level_caption": {
                    "1": {"short": "a red box", "long": "..."},
                    "2": {"short": "", "long": "..."},
                },
                "segmentations": {"1": {"mask": coco_rle(box_mask(0, 1))}, "2": {"mask": coco_rle(box_mask(0, 2))}},
            }
        ],
    )
    folder = root / "videos_raw" / "clips" / "vid1"
    folder.mkdir(parents=True, exist_ok=True)
    frames = rgb_frames(3, seed=6)
    for n, f in zip(["1", "2", "10"], frames):
        cv2.imwrite(str(folder / f"{n}.png"), f[:, :, ::-1])
    segs = {
        "1.png": {"1": {"mask": coco_rle(box_mask(0, 1))}},
        "2.png": {"1": {"mask": coco_rle(box_mask(1, 1))}, "2": {"mask": coco_rle(box_mask(1, 2))}},
        "10.png": {"1": {"mask": coco_rle(box_mask(2, 1))}, "2": {"mask": coco_rle(box_mask(2, 2))}},
    }
    qas = [
        {"question": "What does [01] do at <0>?", "answer": "[1] waits."},
        {"question": "How do [1] and [2] differ?", "answer": "[2] is lower than [1]."},
        {"question": "What is the weather?", "answer": "Sunny."},  # names no instance: skipped
    ]
    write_json(
        root / "inst_it_dataset_video_21k_w_mask.json",
        [
            {
                "video_id": "vid1",
                "video_path": "videos_vpt/clips/vid1",
                "question_answer_pairs": qas,
                "segmentations": segs,
            }
        ],
    )
    return {"frames": frames}


# ------------------------------------------------------------------------------------------ general video QA


def build_videogpt_plus(root: Path) -> None:
    """VideoGPT+ instruction_tuning/ JSONs: a 2 s mp4 (16 frames at 8 fps, grey 10 + 14 t) and a frame-folder one."""
    write_mp4(
        root / "videos" / "k710" / "a.mp4", [np.full((H, W, 3), 10 + 14 * t, np.uint8) for t in range(16)], fps=8.0
    )
    write_jpegs(root / "videos" / "frames_b", [f"{i:05d}" for i in range(3)], rgb_frames(3, seed=7))
    write_json(
        root / "instruction_tuning" / "vcg_plus.json",
        [
            {
                "id": "v0",
                "video": "k710/a.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat happens?"},
                    {"from": "gpt", "value": "It gets brighter."},
                    {"from": "human", "value": "Is it fast?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            },
            {"id": "i0", "image": "coco/x.jpg", "conversations": []},  # image entry: not ours
        ],
    )
    write_json(
        root / "instruction_tuning" / "caption.json",
        [
            {
                "id": "c0",
                "video": "frames_b",
                "conversations": [
                    {"from": "human", "value": "Describe the video.\n<video>"},
                    {"from": "gpt", "value": "Noise."},
                ],
            }
        ],
    )


def build_mvbench(root: Path, tasks) -> None:
    """MVBench json/ (all 20 task files, two with one question) and the videos they name."""
    for _, file, _prefix, _kind, _ in tasks:
        write_json(root / "json" / file, [])
    write_mp4(root / "video" / "star" / "Charades_v1_480" / "X1.mp4", flat_frames(10), fps=2.0)
    write_json(
        root / "json" / "action_sequence.json",
        [
            {
                "video": "X1.mp4",
                "question": "What did the person do first?",
                "candidates": ["Sat.", "Stood.", "Ran."],
                "answer": "Stood.",
                "start": 1.0,
                "end": 3.0,
            }
        ],
    )
    write_jpegs(
        root / "video" / "tvqa" / "frames_fps3_hq" / "ep1", [f"{i:05d}" for i in range(1, 31)], flat_frames(10) * 3
    )
    write_json(
        root / "json" / "episodic_reasoning.json",
        [{"video": "ep1", "question": "Why?", "candidates": ["A reason", "Another"], "answer": "A reason"}],
    )


def prefill_texts(body: str) -> set[str]:
    """Every user text a released pre-fill request may be built from `body` (one per pre-fill template), written out
    from the UniPixel recipe rather than from the converters' helpers."""
    from pixelqa.prompt_format import PREFILL_TEMPLATES

    return {t.format(body) for t in PREFILL_TEMPLATES}


def option_letter(text: str) -> str:
    """The X of the one "\nOptions:\n(X) ..." line in a pre-fill request."""
    import re

    (x,) = re.findall(r"\nOptions:\n\(([A-Z])\) ", text)
    return x
