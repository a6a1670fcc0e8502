"""Each official protocol (pixelqa.eval.official) on samples built by hand: the frames and text it asks for, the
scores of predictions built by hand, and its rows; plus the submission layout of the server-scored splits."""

from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest
import torch

from pixelqa.data import masks
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, Turn, encode_frame
from pixelqa.data.sources.reasonseg import polygon_masks
from pixelqa.eval.official import Prediction, as_prediction, get_official
from pixelqa.eval.submission import SubmissionWriter, read_submission_mask
from pixelqa.prompt_format import REF, SEG

H = W = 8


def _media(n: int) -> Media:
    frame = encode_frame(np.full((H, W, 3), 90, np.uint8), "png")
    return Media("video" if n > 1 else "image", [frame] * n, (H, W), "png", None, [f"{i * 5:05d}" for i in range(n)])


def _box(t: int, x: int = 1, w: int = 3) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[2:5, x : x + w] = True
    return m


def _vos(n: int = 20, meta: dict | None = None, frames=None) -> Sample:
    frames = range(n) if frames is None else frames
    track = ObjectTrack(masks={t: masks.encode(_box(t)) for t in frames})
    return Sample(
        key="v1-0",
        source="mevis",
        split="valid_u",
        task="rvos",
        media=_media(n),
        objects={1: track},
        turns=[Turn("user", "Please segment the dog."), Turn("assistant", f"It is {SEG}.", seg_objects=[1])],
        meta={"expression": "dog on the left", "video": "v1", "exp_id": "0", **(meta or {})},
    )


def test_video_seg_request_frames_and_template():
    req = get_official("mevis").request(_vos(20))
    assert req.llm_frames == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]  # round(arange(0, 20, 19/15))
    assert req.sam_frames == list(range(20))
    assert req.text == "Please segment the dog on the left in this video."
    sav = get_official("ref_sav").request(_vos(4))
    assert sav.text == "Please segment the object according to the description: dog on the left"


def test_video_seg_scores_first_seg_on_every_frame():
    proto = get_official("mevis")
    sample = _vos(4)
    req = proto.request(sample)
    gt = np.stack([_box(t) for t in range(4)])
    half = gt.copy()
    half[2:] = False  # right on frames 0-1, empty on 2-3
    rec = proto.score(sample, req, Prediction("ok", [half, ~gt]))  # the second <|seg|> is ignored
    assert rec["J"] == pytest.approx(0.5) and rec["F"] == pytest.approx(0.5) and not rec["no_seg"]
    empty = proto.score(sample, req, Prediction("no mask"))
    assert empty == {"J": 0.0, "F": 0.0, "no_seg": True}
    rows = proto.aggregate([rec, empty, {"J": 1.0, "F": 0.8, "no_seg": False}])
    assert rows[-1]["J"] == pytest.approx(0.5) and rows[-1]["F"] == pytest.approx(1.3 / 3)
    assert rows[-1]["J&F"] == pytest.approx((0.5 + 1.3 / 3) / 2) and rows[-1]["no_seg"] == 1
    with pytest.raises(ValueError, match="expected \\(4, 8, 8\\)"):
        proto.score(sample, req, Prediction("x", [np.zeros((3, H, W), bool)]))


def test_revos_protocol_rows_and_as_run_r():
    fg = [masks.encode(_box(t) | _box(t, x=5, w=2)) for t in range(3)]  # 9 + 6 = 15 px per frame
    proto = get_official("revos")
    ref = _vos(3, {"expression_type": "referring", "foreground_rles": fg})
    rea = _vos(3, {"expression_type": "reasoning", "foreground_rles": fg})
    gt = np.stack([_box(t) for t in range(3)])
    fp = gt.copy()
    fp[0, 7, 7] = True  # one false-positive pixel over 45 foreground pixels
    r1 = proto.score(ref, proto.request(ref), Prediction("", [fp]))
    r2 = proto.score(rea, proto.request(rea), Prediction("", []))  # no <|seg|>: empty prediction
    assert r1["R"] == round(100 * (1 - 1 / 45), 2) and r1["R_as_run"] == 0.0  # 1 - 255 / 45 < 0
    assert r2["J"] == 0.0 and r2["R"] == 100.0 and r2["no_seg"]
    rows = {r["subset"]: r for r in proto.aggregate([r1, r2])}
    assert rows["overall"]["J&F"] == pytest.approx((rows["referring"]["J&F"] + rows["reasoning"]["J&F"]) / 2)
    assert rows["overall"]["no_seg"] == 1


def test_groundmore_window_zeroes_ground_truth_outside():
    proto = get_official("groundmore")
    sample = _vos(20, {"question": "Who runs?", "question_type": "Causal"})
    sample.media.frame_ids = [str(6 * t) for t in range(20)]  # frame numbers 0, 6, ..., 114 at 6 fps
    sample.meta["action_window"] = {"start": 2, "end": 4, "clip_start": 0}  # frames 12..23 -> positions 2, 3
    req = proto.request(sample)
    assert req.text == "Who runs? Please answer the question and provide the segmentation mask."
    gt = proto.target(sample, req)
    assert [bool(f.any()) for f in gt] == [t in (2, 3) for t in range(20)]
    pred = np.stack([_box(t) for t in range(20)])  # right inside, false positives outside
    rec = proto.score(sample, req, Prediction("he does", [pred]))
    assert rec["J"] == pytest.approx(2 / 20) and rec["windowed"]
    rows = proto.aggregate([rec, {**rec, "question_type": "Sequential", "J": 1.0, "F": 1.0}])
    assert [r["subset"] for r in rows] == ["Causal", "Sequential", "all"]
    assert rows[-1]["J"] == pytest.approx((0.1 + 1.0) / 2)


def _image(box=(2.0, 2.0, 6.0, 5.0)) -> Sample:
    m = np.zeros((12, 12), bool)
    m[2:5, 2:6] = True
    return Sample(
        key="s1",
        source="refcoco",
        split="val",
        task="res",
        media=Media("image", [encode_frame(np.zeros((12, 12, 3), np.uint8), "png")], (12, 12), "png"),
        objects={1: ObjectTrack(masks={0: masks.encode(m)})},
        turns=[Turn("user", "seg"), Turn("assistant", SEG, seg_objects=[1])],
        meta={"expression": "left cup", "box_xyxy": list(box)},
    )


def test_image_seg_ciou_giou_rec():
    proto = get_official("refcoco")
    s = _image()
    req = proto.request(s)
    assert req.text == "Please segment the left cup in this image." and req.sam_frames == [0]
    pred = np.zeros((12, 12), bool)
    pred[2:5, 2:6] = True
    pred[10, 10] = True  # a 1-px speck: in I/U, dropped from the REC box
    r1 = proto.score(s, req, Prediction("", [pred[None]]))
    assert (r1["I"], r1["U"], r1["rec_hit"]) == (12, 13, True)
    r2 = proto.score(s, req, Prediction(""))
    assert (r2["I"], r2["U"], r2["rec_hit"]) == (0, 12, False)
    row = proto.aggregate([r1, r2])[-1]
    assert row["cIoU"] == pytest.approx(12 / 25) and row["gIoU"] == pytest.approx(12 / 13 / 2)
    assert row["REC@0.5"] == 0.5


def test_reasonseg_template_follows_is_sentence():
    proto = get_official("reasonseg")
    s = _image()
    s.meta = {"query": "What can hold water", "is_sentence": True}
    assert proto.request(s).text == "What can hold water Please provide the segmentation mask."
    s.meta = {"query": "the cup?", "is_sentence": False}
    assert proto.request(s).text == "Please segment the the cup? in this image."
    assert proto.request(s).token_budget == (128, 4096) and proto.describe()["token_budget"] == (128, 4096)


RH, RW = 10, 14  # a non-square image, so a transposed mask cannot pass for a right one
REASON_SHAPES = [
    {"label": "target", "points": [[2, 2], [9, 2], [9, 6], [2, 6]]},  # rows 2-6, columns 2-9: 40 px
    {"label": "ignore", "points": [[2, 7], [9, 7], [9, 8], [2, 8]]},  # rows 7-8, columns 2-9: 16 px
]


def _reasonseg(shapes: list[dict]) -> Sample:
    target, ignore = polygon_masks(shapes, RH, RW, "r1.json")  # the converter's masks
    media = Media("image", [encode_frame(np.zeros((RH, RW, 3), np.uint8), "png")], (RH, RW), "png")
    return Sample(
        key="r1",
        source="reasonseg",
        split="val",
        task="reasonseg",
        media=media,
        objects={1: ObjectTrack(masks={0: masks.encode(target)})},
        turns=[Turn("user", "seg"), Turn("assistant", SEG, seg_objects=[1])],
        meta={"query": "what keeps it warm", "is_sentence": False, "ignore_rle": masks.encode(ignore)},
    )


def _released_reasonseg_counts(shapes: list[dict], pred: np.ndarray) -> tuple[int, int]:
    """infer_seg.py on process_masks' polygon masks, as released: shapes painted in np.argsort(area)[::-1] order
    into a uint8 canvas with target 1 and ignore -1, then I and U over `keep = gt != -1`."""
    areas = []
    for shape in shapes:
        tmp = np.zeros((RH, RW), dtype=np.uint8)
        cv2.polylines(tmp, np.array([shape["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp, np.array([shape["points"]], dtype=np.int32), 1)
        areas.append(tmp.sum())
    canvas = np.zeros((RH, RW), dtype=np.uint8)
    for j in np.argsort(areas)[::-1]:
        label = 1 if shapes[j]["label"] == "target" else -1
        cv2.polylines(canvas, np.array([shapes[j]["points"]], dtype=np.int32), True, label, 1)
        cv2.fillPoly(canvas, np.array([shapes[j]["points"]], dtype=np.int32), label)
    gt = torch.from_numpy(canvas).float()
    keep, mask, p = gt != -1, gt.bool(), torch.from_numpy(pred)
    return int(((mask * p) * keep).sum().item()), int(((mask + p) * keep).sum().item())


def test_reasonseg_dont_care_is_background_as_released_and_left_out_with_the_switch():
    s = _reasonseg(REASON_SHAPES)
    target = masks.decode(s.objects[1].masks[0]).astype(bool)
    ignore = masks.decode(s.meta["ignore_rle"]).astype(bool)
    assert target.sum() == 40 and ignore.sum() == 16 and not (target & ignore).any()
    over = target | ignore  # the target plus every don't-care pixel
    under = target.copy()
    under[2, 2:6] = False  # 4 target pixels missed
    plain, lisa = get_official("reasonseg"), get_official("reasonseg+exclude_ignore")
    req = plain.request(s)
    for pred, as_run, left_out in ((over, (40, 56), (40, 40)), (under, (36, 40), (36, 40))):
        # the release saturates the -1 to 0 in its uint8 canvas, so its keep mask is all true
        assert _released_reasonseg_counts(REASON_SHAPES, pred) == as_run
        rec = plain.score(s, req, Prediction("", [pred[None]]))
        assert (rec["I"], rec["U"]) == as_run
        rec = lisa.score(s, req, Prediction("", [pred[None]]))
        assert (rec["I"], rec["U"]) == left_out  # LISA: output[target == ignore] = ignore, in neither I nor U
    assert lisa.describe()["switches"] == ["exclude_ignore"] and plain.describe()["switches"] == []
    assert get_official("reasonseg", switches=["exclude_ignore"]).enabled == {"exclude_ignore"}
    with pytest.raises(ValueError, match="refcoco protocol switches: got \\['lenient_mcq'\\]"):
        get_official("refcoco+lenient_mcq")


def test_prediction_masks_in_another_layout_raise_instead_of_being_reshaped():
    s = _reasonseg(REASON_SHAPES)
    proto = get_official("reasonseg")
    req = proto.request(s)
    target = masks.decode(s.objects[1].masks[0]).astype(bool)
    two_d = proto.score(s, req, Prediction("", [target]))  # an image's (H, W) mask: one frame
    assert (two_d["I"], two_d["U"]) == (40, 40)
    with pytest.raises(ValueError, match=r"reasonseg sample r1: .*got shape \(1, 14, 10\), expected \(1, 10, 14\)"):
        proto.score(s, req, Prediction("", [target.T[None]]))  # same pixel count, transposed
    with pytest.raises(ValueError, match=r"got shape \(14, 10\)"):
        proto.score(s, req, Prediction("", [target.T]))
    # video: (T, W, H) for (T, H, W)
    m = np.zeros((RH, RW), bool)
    m[2:5, 1:4] = True
    vid = _vos(3)
    vid.media = Media("video", vid.media.frames[:3], (RH, RW), "png", None, ["00000", "00005", "00010"])
    vid.objects = {1: ObjectTrack(masks={t: masks.encode(m) for t in range(3)})}
    mevis = get_official("mevis")
    vreq = mevis.request(vid)
    good = mevis.score(vid, vreq, Prediction("", [np.stack([m] * 3)]))
    assert good["J"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"mevis sample v1-0: .*got shape \(3, 14, 10\), expected \(3, 10, 14\)"):
        mevis.score(vid, vreq, Prediction("", [np.stack([m.T] * 3)]))


def _mcq(source: str = "videorefer_bench_q", n: int = 30) -> Sample:
    annotated = list(range(0, n, 1))
    track = ObjectTrack(masks={t: masks.encode(_box(t)) for t in annotated})
    text = "What is [1] doing?\nOptions:\n(A) running\n(B) sitting\nAnswer with the option's letter."
    return Sample(
        key="q1",
        source=source,
        split="single_frame",
        task="mcq",
        media=_media(n),
        objects={1: track},
        turns=[Turn("user", text, memory_objects=[1]), Turn("assistant", "B")],
        answer="B",
        choices=["running", "sitting"],
        meta={"key_frame": 7, "question_type": "BQ"},
    )


def test_videorefer_q_frames_prefix_memory_and_parsing():
    proto = get_official("videorefer_bench_q")
    s = _mcq()
    req = proto.request(s)
    assert 7 in req.llm_frames and len(req.llm_frames) == 16 and req.llm_frames == req.sam_frames
    assert req.assistant_prefix == "The best option is ("
    assert req.text.endswith("(B) sitting\nPlease only give the best option.")
    assert sorted(req.memory[1]) == req.llm_frames  # ground-truth memory on the sampled frames only
    recs = [proto.score(s, req, Prediction(t)) for t in ("B) sitting", "(a)", "", "B.")]
    assert [r["correct"] for r in recs] == [True, False, False, True]
    rows = proto.aggregate(recs)
    assert rows[-1]["Acc"] == 0.5 and rows[-1]["unparsed"] == 1 and rows[0]["subset"] == "BQ"


def test_mcq_reads_the_official_first_word_and_lenient_only_with_the_switch():
    s = _mcq()
    official = get_official("videorefer_bench_q")
    req = official.request(s)
    # text -> (chosen by eval_general.check_ans, chosen with lenient_mcq); the answer is B
    cases = {
        "Answer: B": ("A", "B"),  # 'answer:' -> 'a'
        "The best option is (B) sitting": (None, "B"),  # 't' is no option of two
        "Best Option: (B)": ("B", "B"),  # 'best' -> 'b', right by luck
        " B": (None, "B"),  # split(' ') leaves an empty first token
        "B) sitting": ("B", "B"),
    }
    for text, (want, _) in cases.items():
        assert official.score(s, req, Prediction(text))["chosen"] == want, text
    lenient = get_official("videorefer_bench_q+lenient_mcq")
    for text, (_, want) in cases.items():
        assert lenient.score(s, req, Prediction(text))["chosen"] == want, text
    assert get_official("pixelqa+lenient_mcq").describe()["switches"] == ["lenient_mcq"]
    assert get_official("mvbench+lenient_mcq").enabled == {"lenient_mcq"}


def test_mvbench_prefix_and_frames():
    proto = get_official("mvbench")
    s = _mcq("mvbench", n=16)
    req = proto.request(s)
    assert req.assistant_prefix == "Best Option: (" and req.llm_frames == list(range(16)) and req.max_new_tokens == 256


def test_pixelqa_two_pass_request_and_object_means():
    proto = get_official("pixelqa")
    s = _mcq("pixelqa", n=20)
    s.objects[2] = ObjectTrack(masks={t: masks.encode(_box(t, x=5, w=2)) for t in range(20)})
    s.prompts = [Prompt("point", 7, 1, [2.5, 3.5]), Prompt("box", 7, 2, [5, 2, 7, 5])]
    s.turns = [
        Turn("user", f"What is [1] {REF} doing with [2] {REF}? Please localize the relevant objects with IDs."),
        Turn("assistant", f"[1] {SEG} [2] {SEG}", seg_objects=[1, 2]),
        *s.turns,
    ]
    req = proto.request(s)
    assert req.prefill_text.endswith("Please localize the relevant objects with IDs.") and len(req.prompts) == 2
    assert 7 in req.llm_frames and req.assistant_prefix == "The best option is ("
    gt1 = np.stack([_box(t) for t in req.sam_frames])
    rec = proto.score(s, req, Prediction("B", [gt1]))  # object 1 exact, object 2 missing -> empty -> 0
    assert rec["objects"] == [[pytest.approx(1.0, abs=1e-6), pytest.approx(1.0, abs=1e-5)], [0.0, 0.0]]
    assert rec["missing_masks"] == 1 and rec["correct"]
    row = proto.aggregate([rec, {**rec, "objects": [[0.5, 0.5]], "correct": False}])[-1]
    assert row["J"] == pytest.approx(1.5 / 3, abs=1e-5)  # over objects; per question it would be 0.5
    assert row["Acc"] == 0.5 and row["objects"] == 3
    frames_last = np.moveaxis(gt1, 0, -1)  # (H, W, T): the pixel count of (T, H, W), another layout
    with pytest.raises(ValueError, match=r"pixelqa sample q1 object 1: .*expected \(16, 8, 8\)"):
        proto.score(s, req, Prediction("B", [frames_last]))


def test_describe_writes_judge_records():
    proto = get_official("videorefer_bench_d")
    s = _mcq("videorefer_bench_d")
    s.answer, s.meta = "a dog", {"key_frame": 0, "video": "v.mp4", "index": 3}
    req = proto.request(s)
    assert req.max_new_tokens == 512 and req.assistant_prefix == ""
    rec = proto.score(s, req, Prediction("a brown dog"))
    assert rec == {"video": "v.mp4", "index": 3, "caption": "a dog", "pred": "a brown dog"}
    assert "pending" in proto.aggregate([rec])[0]["score"]


def test_submission_layout_palette_pngs_zip(tmp_path):
    proto = get_official("ref_youtube_vos")
    proto.writer = SubmissionWriter("ref_youtube_vos", tmp_path / "sub")
    s = _vos(3)
    req = proto.request(s)
    pred = np.stack([_box(t) for t in range(3)])
    rec = proto.score(s, req, Prediction("", [pred]))
    assert rec["files"] == 3
    png = tmp_path / "sub" / "Annotations" / "v1" / "0" / "00005.png"
    from PIL import Image

    assert Image.open(png).mode == "P"
    assert (read_submission_mask(png) == pred[1]).all()
    zp = proto.writer.finish(tmp_path / "out.zip")
    names = zipfile.ZipFile(zp).namelist()
    assert names == ["Annotations/v1/0/00000.png", "Annotations/v1/0/00005.png", "Annotations/v1/0/00010.png"]
    mevis = SubmissionWriter("mevis", tmp_path / "m")
    mevis.write("vid", "3", ["00000"], pred[:1])
    assert (tmp_path / "m" / "vid" / "3" / "00000.png").is_file()
    with pytest.raises(ValueError, match="server-scored"):
        SubmissionWriter("revos", tmp_path)


def test_as_prediction_and_unknown_protocol():
    p = as_prediction(("t", {1: np.ones((1, 2, 2)), 0: np.zeros((1, 2, 2))}))
    assert p.text == "t" and p.masks[0].dtype == bool and not p.masks[0].any()
    with pytest.raises(TypeError, match="answer_fn"):
        as_prediction("just text")
    with pytest.raises(ValueError, match="benchmark: got 'nope'"):
        get_official("nope")
