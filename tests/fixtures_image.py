"""Builders of tiny image-dataset fixtures in their REAL on-disk formats (refer pickles, LISA ReasonSeg JSON,
class-index / palette PNGs, COCO part JSON, Osprey-724K JSON, LLaVA-665K JSON), written into a tmp folder.

Each builder returns the values it put in, so tests can check the converted samples against them.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32  # every fixture image is 24 x 32 (H x W) unless a builder says otherwise


def write_image(path: Path, h: int = H, w: int = W, seed: int = 0, fmt: str = "JPEG") -> np.ndarray:
    """Write a random RGB image (JPEG by default) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)
    return rgb


def rect_polygon(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """A COCO polygon [x, y, ...] tracing an axis-aligned rectangle."""
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def rect_mask(x1: int, y1: int, x2: int, y2: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) bool mask with rows y1..y2-1 and columns x1..x2-1 set."""
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE written by hand: column-major run lengths, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    counts, current, run = [], False, 0
    for v in flat:
        if bool(v) == current:
            run += 1
        else:
            counts.append(run)
            current, run = bool(v), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


# ----------------------------------------------------------------------------------------------- refer


def build_refer(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> dict:
    """A refer-toolkit folder: <root>/<dataset>/{refs(<split_by>).p, instances.json} plus images.

    Image 1 (train) has refs 100 (two sentences, ann 11) and 101 (ann 12); image 2 has ref 200 (val, ann 21)
    and ref 201 (testB, ann 22). RefClef gets list-of-RLE segmentations, the others polygons.
    """
    clef = dataset == "refclef"
    img_dir = root / ("images/saiapr_tc-12" if clef else "images/mscoco/images/train2014")
    files = {
        1: "25/images/25008.jpg" if clef else "COCO_train2014_000000000001.jpg",
        2: "25/images/25009.jpg" if clef else "COCO_train2014_000000000002.jpg",
    }
    for iid, name in files.items():
        write_image(img_dir / name, seed=iid)
    rects = {11: (2, 3, 10, 8), 12: (15, 10, 30, 20), 21: (0, 0, 8, 8), 22: (20, 12, 32, 24)}
    image_of = {11: 1, 12: 1, 21: 2, 22: 2}
    anns = []
    for aid, (x1, y1, x2, y2) in rects.items():
        seg = [uncompressed_rle(rect_mask(x1, y1, x2, y2))] if clef else [rect_polygon(x1, y1, x2, y2)]
        anns.append(
            {
                "id": aid,
                "image_id": image_of[aid],
                "category_id": 1 if aid % 2 else 2,
                "segmentation": seg,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
        )
    instances = {
        "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in files.items()],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "dog"}],
    }

    def sent(sid: int, text: str) -> dict:
        return {"sent_id": sid, "sent": text, "raw": text.upper(), "tokens": text.split()}

    refs = [
        {
            "ref_id": 100,
            "ann_id": 11,
            "image_id": 1,
            "category_id": 1,
            "split": "train",
            "file_name": "x.jpg",
            "sent_ids": [1000, 1001],
            "sentences": [sent(1000, "man on the left"), sent(1001, "guy in red")],
        },
        {
            "ref_id": 101,
            "ann_id": 12,
            "image_id": 1,
            "category_id": 2,
            "split": "train",
            "file_name": "x.jpg",
            "sent_ids": [1010],
            "sentences": [sent(1010, "the brown dog")],
        },
        {
            "ref_id": 200,
            "ann_id": 21,
            "image_id": 2,
            "category_id": 1,
            "split": "val",
            "file_name": "y.jpg",
            "sent_ids": [2000],
            "sentences": [sent(2000, "top left person")],
        },
        {
            "ref_id": 201,
            "ann_id": 22,
            "image_id": 2,
            "category_id": 2,
            "split": "testB",
            "file_name": "y.jpg",
            "sent_ids": [2010],
            "sentences": [sent(2010, "dog bottom right")],
        },
    ]
    d = root / dataset
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the release's pickles are protocol 2 (Python 2)
    (d / "instances.json").write_text(json.dumps(instances))
    return {"rects": rects, "refs": refs, "files": files, "image_dir": img_dir}


# ------------------------------------------------------------------------------------------- ReasonSeg


def labelme_rect(label: str, x1: int, y1: int, x2: int, y2: int, image_name: str) -> dict:
    """A ReasonSeg (LabelMe-style) polygon shape tracing a rectangle."""
    return {
        "label": label,
        "labels": [label],
        "shape_type": "polygon",
        "image_name": image_name,
        "points": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]],
        "group_id": None,
        "flags": {},
    }


def build_reasonseg(root: Path) -> dict:
    """<root>/{train,val}/<name>.{jpg,json} + <root>/explanatory/train.json.

    train/a_1: target rectangle (2,2)-(20,15) with an ignore hole (5,5)-(8,8), two sentence queries.
    train/b_2: ignore everywhere, target (10,10)-(14,12) on top, one short query, plus a 'flag' shape.
    train/c_3: only an ignore region (no target): skipped in train.
    val/d_4:   the same as c_3 in val: kept (evaluation counts every query).
    cv2 fills polygons with their boundary, so a rectangle (x1,y1)-(x2,y2) covers rows y1..y2, cols x1..x2.
    """
    specs = {
        ("train", "a_1"): (
            [("target", 2, 2, 20, 15), ("ignore", 5, 5, 8, 8)],
            ["What keeps the room warm?", "Which thing would you sit on?"],
            True,
        ),
        ("train", "b_2"): (
            [("ignore", 0, 0, 31, 23), ("target", 10, 10, 14, 12), ("flag", 0, 0, 3, 3)],
            ["the red cup"],
            False,
        ),
        ("train", "c_3"): ([("ignore", 1, 1, 5, 5)], ["nothing here"], False),
        ("val", "d_4"): ([("ignore", 1, 1, 5, 5)], ["What is missing?"], True),
    }
    for i, ((split, name), (shapes, texts, is_sentence)) in enumerate(specs.items()):
        write_image(root / split / f"{name}.jpg", seed=10 + i)
        ann = {
            "text": texts,
            "is_sentence": is_sentence,
            "shapes": [labelme_rect(lab, *xy, image_name=f"{name}.jpg") for lab, *xy in shapes],
        }
        (root / split / f"{name}.json").write_text(json.dumps(ann))
    (root / "explanatory").mkdir(parents=True, exist_ok=True)
    (root / "explanatory" / "train.json").write_text(
        json.dumps(
            [{"image": "a_1.jpg", "query": "What keeps the room warm?", "outputs": "The fireplace  heats the room."}]
        )
    )
    return {"specs": specs}


# ---------------------------------------------------------------------------------- semantic segmentation


def write_label_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """Write a class-index PNG: grayscale ('L') or palette ('P', with an arbitrary colour palette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:
        im = Image.frombytes("P", im.size, im.tobytes())  # same indices, palette mode
        im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8)))
    im.save(path)


def build_ade20k(root: Path) -> dict:
    """ADEChallengeData2016 layout: value 3 (sky) on top rows, 13 (person) in a box, 0 elsewhere."""
    label = np.zeros((H, W), dtype=np.uint8)
    label[0:6, :] = 3
    label[10:20, 4:12] = 13
    write_image(root / "images" / "training" / "ADE_train_00000001.jpg", seed=21)
    write_label_png(root / "annotations" / "training" / "ADE_train_00000001.png", label)
    return {"label": label}


def build_cocostuff(root: Path) -> dict:
    """stuffthingmaps layout: 0 (person), 17 (dog), 95 (building-other, skipped), 255 unlabeled elsewhere."""
    label = np.full((H, W), 255, dtype=np.uint8)
    label[0:5, 0:5] = 0
    label[8:16, 10:30] = 17
    label[20:24, :] = 95
    write_image(root / "train2017" / "000000000009.jpg", seed=22)
    write_label_png(root / "stuffthingmaps_trainval2017" / "train2017" / "000000000009.png", label)
    return {"label": label}


def build_mapillary(root: Path) -> dict:
    """Mapillary Vistas v2.0 layout with a 3-label config; palette label PNG (0 bird, 1 road, 2 unlabeled)."""
    config = {
        "labels": [
            {"name": "animal--bird", "readable": "Bird", "color": [165, 42, 42], "instances": True, "evaluate": True},
            {
                "name": "construction--flat--road",
                "readable": "Road",
                "color": [128, 64, 128],
                "instances": False,
                "evaluate": True,
            },
            {
                "name": "void--unlabeled",
                "readable": "Unlabeled",
                "color": [0, 0, 0],
                "instances": False,
                "evaluate": False,
            },
        ],
        "version": "2.0",
        "mapping": "public",
        "folder_structure": "{split}/{content}/{key:.{22}}.{ext}",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_v2.0.json").write_text(json.dumps(config))
    label = np.full((H, W), 2, dtype=np.uint8)
    label[12:24, :] = 1
    label[2:4, 2:6] = 0
    write_image(root / "training" / "images" / "abcDEF123.jpg", seed=23)
    write_label_png(root / "training" / "v2.0" / "labels" / "abcDEF123.png", label, palette=True)
    return {"label": label}


# ------------------------------------------------------------------------------------- part segmentation


def build_coco_parts(
    json_path: Path, image_root: Path, file_names: dict[int, str], cats: list[dict], anns: list[dict]
) -> None:
    """A COCO-format part JSON plus its images (PACO-LVIS / VLPart PASCAL-Part style)."""
    for iid, name in file_names.items():
        write_image(image_root / name, seed=30 + iid)
    data = {
        "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in file_names.items()],
        "annotations": anns,
        "categories": cats,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))


def build_paco(root: Path) -> dict:
    """PACO layout: <root>/annotations/paco_lvis_v1_train.json, images under <root>/coco/train2017/.

    Image 9: two 'car_(automobile):wheel' annotations (polygons, merged into one object), one
    'car_(automobile)' object (RLE), one 'trash_can:lid' part (polygon).
    """
    cats = [
        {"id": 1, "name": "car_(automobile)", "supercategory": "object"},
        {"id": 2, "name": "car_(automobile):wheel", "supercategory": "part"},
        {"id": 3, "name": "trash_can:lid", "supercategory": "part"},
    ]
    anns = [
        {"id": 1, "image_id": 9, "category_id": 2, "segmentation": [rect_polygon(2, 16, 8, 22)], "bbox": [2, 16, 6, 6]},
        {
            "id": 2,
            "image_id": 9,
            "category_id": 2,
            "segmentation": [rect_polygon(20, 16, 26, 22)],
            "bbox": [20, 16, 6, 6],
        },
        {
            "id": 3,
            "image_id": 9,
            "category_id": 1,
            "segmentation": uncompressed_rle(rect_mask(0, 8, 30, 23)),
            "bbox": [0, 8, 30, 15],
        },
        {"id": 4, "image_id": 9, "category_id": 3, "segmentation": [rect_polygon(1, 1, 5, 4)], "bbox": [1, 1, 4, 3]},
    ]
    files = {9: "train2017/000000000009.jpg"}
    build_coco_parts(root / "annotations" / "paco_lvis_v1_train.json", root / "coco", files, cats, anns)
    return {"anns": anns, "files": files}


def build_pascal_part(root: Path) -> dict:
    """VLPart PASCAL-Part layout: <root>/train.json + <root>/VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg."""
    cats = [{"id": 5, "name": "person:hair"}, {"id": 6, "name": "dog:leg"}]
    anns = [
        {"id": 1, "image_id": 2, "category_id": 5, "segmentation": [rect_polygon(4, 0, 12, 5)]},
        {"id": 2, "image_id": 2, "category_id": 6, "segmentation": [rect_polygon(18, 14, 22, 23)]},
    ]
    files = {2: "2008_000002.jpg"}
    build_coco_parts(root / "train.json", root / "VOCdevkit" / "VOC2010" / "JPEGImages", files, cats, anns)
    return {"anns": anns, "files": files}


# ---------------------------------------------------------------------------------------------- Osprey


def build_osprey(root: Path, broken_record: bool = False) -> dict:
    """Osprey-724K files under <root>/Osprey-724K/ with COCO images under <root>/coco/{train2017,imgs}/.

    With `broken_record`, the conversation file's record 1 names a region that does not exist (as a small part of
    the release does): a counted reject, so a build with --on-error fail stops on it.

    Regions: region1 = rectangle (2,2)-(12,10) as a polygon, region2 = (16,8)-(30,20) as an uncompressed RLE.
    """
    write_image(root / "coco" / "train2017" / "000000000009.jpg", seed=40)  # conversation uses COCO_train2014_ names
    write_image(root / "coco" / "imgs" / "000000000010.jpg", seed=41)
    regions = [
        {"segmentation": [rect_polygon(2, 2, 12, 10)], "bbox": [2, 2, 10, 8]},
        {"segmentation": uncompressed_rle(rect_mask(16, 8, 30, 20)), "bbox": [16, 8, 14, 12]},
    ]
    base = {"file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W, "annotation": regions}
    conv = [
        {
            **base,
            "id": 101,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is <region1> doing next to <region2]?"},
                {"from": "gpt", "value": "The person in <region1> is sitting."},
                {"from": "human", "value": "And <region 2>?"},
                {"from": "gpt", "value": "It sleeps."},
            ],
        },
        {
            **base,
            "id": 102,
            "conversations": [  # region 3 does not exist: a counted reject
                {"from": "human", "value": "Compare <region1> and <region3>."},
                {"from": "gpt", "value": "No."},
            ],
        },
        {
            **base,
            "id": 103,
            "conversations": [  # trailing question without answer is dropped
                {"from": "human", "value": "Is <region2> an animal?"},
                {"from": "gpt", "value": "Yes."},
                {"from": "human", "value": "Why?"},
            ],
        },
    ]
    if not broken_record:
        conv = [c for c in conv if c["id"] != 102]
    detail = [{**base, "id": 201, "description": ["<region1>: A man in a red shirt.", "<Region2>: A sleeping dog."]}]
    pos_neg = [
        {
            "id": 301,
            "file_name": "000000000010.jpg",
            "height": H,
            "width": W,
            "annotation": regions[:1],
            "conversations": [{"from": "human", "value": "Is <region1> a cat?"}, {"from": "gpt", "value": "No"}],
        }
    ]
    d = root / "Osprey-724K"
    d.mkdir(parents=True, exist_ok=True)
    (d / "osprey_conversation.json").write_text(json.dumps(conv))
    (d / "osprey_detail_description.json").write_text(json.dumps(detail))
    (d / "osprey_lvis_positive_negative.json").write_text(json.dumps(pos_neg))
    return {"conv": conv, "detail": detail, "pos_neg": pos_neg}


# ----------------------------------------------------------------------------------------------- LLaVA


def build_llava(root: Path) -> dict:
    """<root>/llava_v1_5_mix665k.json with an image record, a text-only record and an OCR-VQA GIF-as-.jpg."""
    write_image(root / "coco" / "train2017" / "000000033471.jpg", seed=50)
    # a 4-colour blocky image survives GIF's palette exactly (random noise would not)
    gif_pixels = np.zeros((H, W, 3), dtype=np.uint8)
    gif_pixels[: H // 2, : W // 2] = (200, 30, 30)
    gif_pixels[: H // 2, W // 2 :] = (30, 200, 30)
    gif_pixels[H // 2 :, : W // 2] = (30, 30, 200)
    (root / "ocr_vqa" / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(gif_pixels).save(root / "ocr_vqa" / "images" / "140031996.jpg", format="GIF")
    records = [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."},
            ],
        },
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": [{"from": "human", "value": "How to get a job?"}, {"from": "gpt", "value": "Apply."}],
        },
        {
            "id": "140031996",
            "image": "ocr_vqa/images/140031996.jpg",
            "conversations": [
                {"from": "human", "value": "Who wrote this book?\n<image>"},
                {"from": "gpt", "value": "Jane Doe"},
            ],
        },
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    return {"records": records, "gif_pixels": gif_pixels}
