"""An image referring-segmentation source of one's own, registered in-process as docs/extending.md says (a converter
and an `ImageSegProtocol` named after it), is a teacher-forced benchmark by name, as a video one is: listed, taken by
`python -m pixelqa.evaluate eval.benchmark=NAME`, and scored on the tiny model by the official image rules (cIoU,
gIoU, REC@0.5, recomputed here from the model's own masks and the fixture's drawn truth). The built-in six keep their
names, order and REC (none for ReasonSeg)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pixelqa.data import masks, registry
from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import ObjectTrack, Sample, make_key
from pixelqa.data.sources._image_files import read_image
from pixelqa.data.sources._instructions import seg_turns

NAME = "toyres_ext"
H, W = 24, 32
BUILT_IN = ("refcoco", "refcoco_plus", "refcocog", "refcocog_google", "refclef", "reasonseg")
# (id, expression, object rectangle x1, y1, x2, y2 (exclusive ends): the mask, and the annotation box as COCO gives it)
RECORDS = [
    (1, "the left box", (2, 3, 10, 9)),
    (2, "the wide box", (12, 4, 30, 12)),
    (3, "the low box", (5, 14, 15, 23)),
    (4, "the corner box", (24, 16, 32, 24)),
    (5, "the whole picture", (0, 0, 32, 24)),
]


class ToyRES(Source):
    """One's own image RES source: <root>/<split>.json lists {"id", "image", "mask", "expression", "box"} records
    (an RGB PNG and a 0/255 mask PNG each; box [x1, y1, x2, y2]); one sample per expression, as refer's val."""

    splits = ("val",)
    task = "res"

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """The split's record list."""
        path = Path(root) / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.name} {split}: expected {path}")
        return [path]

    def items(self, root: Path, split: str) -> list[int]:
        """Record positions, in file order."""
        (path,) = self.raw_files(root, split)
        return list(range(len(json.loads(path.read_text()))))

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One expression: the image, its object's mask, a <|seg|> answer, the expression and box in meta."""
        (path,) = self.raw_files(root, split)
        rec = json.loads(path.read_text())[item]
        image = read_image(Path(root) / rec["image"])
        gt = np.asarray(Image.open(Path(root) / rec["mask"])) > 0
        key = make_key(rec["id"])
        yield Sample(
            key=key,
            source=self.name,
            split=split,
            task=self.task,
            media=image.media(rec["image"]),
            objects={1: ObjectTrack(masks={0: masks.encode(gt)})},
            turns=seg_turns([(rec["expression"], 1)], key),
            meta={"expression": rec["expression"], "box_xyxy": rec["box"]},
        )


def write_fixture(root: Path) -> dict[str, tuple[np.ndarray, list[float]]]:
    """The raw files of ToyRES's val split; returns the drawn (mask, box) per sample key."""
    rng = np.random.default_rng(0)
    records, truth = [], {}
    for rid, text, (x1, y1, x2, y2) in RECORDS:
        gt = np.zeros((H, W), bool)
        gt[y1:y2, x1:x2] = True
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{rid}.png")
        Image.fromarray(gt.astype(np.uint8) * 255).save(root / "images" / f"{rid}_mask.png")
        box = [float(x1), float(y1), float(x2), float(y2)]
        records.append({"id": rid, "image": f"images/{rid}.png", "mask": f"images/{rid}_mask.png"})
        records[-1].update(expression=text, box=box)
        truth[make_key(rid)] = (gt, box)
    (root / "val.json").write_text(json.dumps(records))
    return truth


@pytest.fixture
def toy_source():
    """ToyRES registered as a converter under NAME for the test, then removed."""
    from pixelqa.data.catalog import list_sources

    list_sources()  # the built-in converters first, so that removing NAME afterwards leaves exactly them
    register_source(NAME)(ToyRES)
    yield NAME
    registry._REGISTRY.pop(NAME, None)
    registry._ORIGINS.pop(NAME, None)


@pytest.fixture
def toy_protocol():
    """NAME's ImageSegProtocol (with REC) registered, then unregistered."""
    from pixelqa.eval.official import ImageSegProtocol, register_protocol, unregister_protocol

    register_protocol(NAME, lambda: ImageSegProtocol(NAME, rec=True))
    yield NAME
    unregister_protocol(NAME)


def test_the_built_in_image_benchmarks_are_discovered_with_their_rec():
    from pixelqa.eval import image_seg
    from pixelqa.eval.official import get_official

    assert image_seg.image_seg_benchmarks()[: len(BUILT_IN)] == BUILT_IN
    assert image_seg.IMAGE_SEG_BENCHMARKS == BUILT_IN  # the old name, read from the registry
    assert image_seg.REC_BENCHMARKS == BUILT_IN[:-1] == image_seg.rec_benchmarks()  # ReasonSeg has no boxes
    assert get_official("refclef").rec and not get_official("reasonseg").rec
    with pytest.raises(ValueError, match=r"source: got 'mevis', expected an image segmentation benchmark, one of \["):
        image_seg.image_seg_protocol("mevis")


def test_a_registered_image_protocol_is_a_benchmark_by_name(toy_protocol):
    from pixelqa.eval import get_protocol, list_benchmarks
    from pixelqa.eval.image_seg import evaluate_image_seg
    from pixelqa.eval.official import ImageSegProtocol, register_protocol, unregister_protocol

    assert list_benchmarks()[-1] == NAME
    fn = get_protocol(NAME)
    assert isinstance(fn, partial) and fn.func is evaluate_image_seg and fn.keywords == {"source": NAME}
    from pixelqa.eval.image_seg import IMAGE_SEG_BENCHMARKS, REC_BENCHMARKS

    assert IMAGE_SEG_BENCHMARKS[-1] == NAME and REC_BENCHMARKS[-1] == NAME
    # REC is what the protocol declares; a protocol named after another source's shards is no benchmark name
    register_protocol("toyres_norec", lambda: ImageSegProtocol("toyres_norec", rec=False))
    register_protocol("toyres_alias", lambda: ImageSegProtocol(NAME, rec=True))
    try:
        from pixelqa.eval import image_seg

        assert image_seg.image_seg_benchmarks()[-2:] == (NAME, "toyres_norec")
        assert "toyres_norec" not in image_seg.REC_BENCHMARKS
        assert "toyres_alias" not in list_benchmarks()
    finally:
        unregister_protocol("toyres_norec")
        unregister_protocol("toyres_alias")


def test_without_its_protocol_the_source_is_refused_naming_the_benchmarks():
    from pixelqa.eval import get_protocol

    with pytest.raises(
        ValueError, match=rf"eval\.benchmark: got '{NAME}', expected one of \['synthetic', .*'reasonseg'"
    ):
        get_protocol(NAME)


def rec_box(pred: np.ndarray) -> list[float] | None:
    """REC's box by the official rule, written here apart: 8-connected components of 10 px or more, then the
    inclusive max pixel indices [x1, y1, x2, y2]; None when nothing is left."""
    labels, count = ndimage.label(pred, structure=np.ones((3, 3), bool))
    kept = np.zeros_like(pred)
    for k in range(1, count + 1):
        part = labels == k
        if part.sum() >= 10:
            kept |= part
    ys, xs = np.nonzero(kept)
    return None if len(xs) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]


def box_iou_no_plus_one(a: list[float], b: list[float]) -> float:
    """IoU of [x1, y1, x2, y2] boxes with areas (x2 - x1) * (y2 - y1)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_evaluate_scores_the_new_source_on_the_tiny_model(tmp_path, monkeypatch, toy_source, toy_protocol, capsys):
    from pixelqa import evaluate
    from pixelqa.config import load_recipe, to_object
    from pixelqa.data.shards import build_shards
    from pixelqa.eval import model_loading
    from pixelqa.eval.runner import eval_batches

    truth = write_fixture(tmp_path / "raw")
    build_shards(NAME, tmp_path / "raw", tmp_path / "shards", split="val", progress=False)
    built: list = []
    real = model_loading.load_model

    def load_present(recipe, ckpt):
        """The tiny model, its object-score head biased to 'present': untrained, it gates every mask to empty."""
        model = real(recipe, ckpt)
        with torch.no_grad():
            model.mask_decoder.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
        built.append(model)
        return model

    monkeypatch.setattr(model_loading, "load_model", load_present)
    torch.set_num_threads(1)
    args = ["recipe=stage3", "tracking=none", f"data.shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}"]
    args += [f"eval.benchmark={NAME}", "eval.split=val", "tracking.log_overlays=false"]
    metrics = evaluate.run(args)
    assert f"benchmark={NAME} split=val" in capsys.readouterr().out
    assert metrics[f"{NAME}/samples_scored"] == len(RECORDS)

    # the same model's masks, scored here against the drawn masks and boxes
    (model,) = built
    recipe = to_object(load_recipe(args))
    inter, union, ious, hits, seen = 0, 0, [], [], []
    for batch, out, _ in eval_batches(model, recipe, NAME, "val"):
        for i in range(batch.size):
            key = batch.keys[i]
            pred = (out.pred_masks[i][0, 0] > 0).numpy()  # (K=1, T=1, H, W) -> (H, W)
            gt, gt_box = truth[key]
            i_px, u_px = int((pred & gt).sum()), int((pred | gt).sum())
            inter, union = inter + i_px, union + u_px
            ious.append(i_px / u_px if u_px else 1.0)
            box = rec_box(pred)
            hits.append(box is not None and box_iou_no_plus_one(box, gt_box) >= 0.5)
            seen.append(key)
    assert sorted(seen) == sorted(truth)
    assert 0 < inter < union and any(hits) and not all(hits)  # the comparison below is not one of zeros
    assert metrics[f"{NAME}/cIoU"] == pytest.approx(inter / union, rel=1e-9)
    assert metrics[f"{NAME}/gIoU"] == pytest.approx(float(np.mean(ious)), rel=1e-9)
    assert metrics[f"{NAME}/REC@0.5"] == pytest.approx(float(np.mean(hits)), rel=1e-9)


def test_a_registration_whose_factory_raises_is_left_out_with_a_warning_not_every_look_up_broken(toy_protocol):
    from pixelqa.eval import get_protocol, list_benchmarks
    from pixelqa.eval.official import register_protocol, unregister_protocol

    def broken():
        raise ImportError("no module named 'their_dependency'")

    register_protocol("broken_bench", broken)
    try:
        with pytest.warns(UserWarning, match=r"'broken_bench'.*cannot be built \(no module named 'their_dependency'\)"):
            names = list_benchmarks()
        assert NAME in names and "broken_bench" not in names and "refcoco" in names and "mevis" in names
        with pytest.warns(UserWarning, match="broken_bench"):
            assert get_protocol("refcoco").keywords == {"source": "refcoco"}
    finally:
        unregister_protocol("broken_bench")
