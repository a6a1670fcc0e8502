"""Official-script scores (pixelqa.metrics.protocols), the MCQ parser and the prompt templates against
hand-computed values; each number is chosen so that the common departures (pooled means, +1 box areas,
4-connectivity, boundary F, per-question means) give a different value."""

from __future__ import annotations

import numpy as np
import pytest

from pixelqa.eval import answers, templates
from pixelqa.metrics import protocols as pm


def _clip(frames: int = 2, size: int = 4) -> np.ndarray:
    return np.zeros((frames, size, size), dtype=bool)


def test_revos_expression_corrected_and_as_run():
    gt, pred, fg = _clip(), _clip(), _clip()
    gt[0, 0, :2] = gt[1, 0, :2] = True  # 4 px
    pred[:] = gt
    pred[0, 1, 1] = True  # one false positive
    fg[:] = gt
    fg[1, 3, 2:] = True  # another object: |fg| = 6
    s = pm.revos_expression(pred, gt, fg)
    assert s["J"] == 83.33  # frames 2/3 and 1 -> 5/6
    assert s["A"] == 96.88  # 31 of 32 pixels agree: 96.875 rounded half-even to 2 decimals
    assert s["A_as_run"] == 84.38  # only background agreement counts: 27/32
    assert s["R"] == 83.33  # 1 - 1/6
    assert s["R_as_run"] == 0.0  # 1 - 255/6 < 0
    assert 0 <= s["F"] <= 100
    perfect = pm.revos_expression(gt, gt, fg)
    assert perfect["J"] == perfect["F"] == perfect["A"] == perfect["R"] == perfect["R_as_run"] == 100.0


def test_revos_rows_overall_is_mean_of_subset_means():
    def rec(subset, j, f):
        return {"subset": subset, "J": j, "F": f, "A": 0.0, "A_as_run": 0.0, "R": 0.0, "R_as_run": 0.0}

    rows = pm.revos_rows([rec("referring", 50, 70), rec("referring", 60, 80), rec("reasoning", 20, 40)])
    by = {r["subset"]: r for r in rows}
    assert by["referring"]["J&F"] == pytest.approx(65.0)
    assert by["reasoning"]["J&F"] == pytest.approx(30.0)
    assert by["overall"]["J&F"] == pytest.approx(47.5)  # pooled would be 53.33
    assert by["overall"]["J"] == pytest.approx(37.5)  # pooled would be 43.33
    assert [r["subset"] for r in rows] == ["referring", "reasoning", "overall"]


def test_rec_box_drops_small_components_and_iou_has_no_plus_one():
    m = np.zeros((12, 12), dtype=bool)
    m[2:5, 2:6] = True  # 12 px blob: inclusive box x 2..5, y 2..4
    m[9:11, 9] = True  # 2 px speck, dropped
    assert pm.rec_pred_box(m) == [2.0, 2.0, 5.0, 4.0]
    gt = [2.0, 2.0, 6.0, 5.0]  # COCO [2, 2, 4, 3] -> [x, y, x + w, y + h]
    assert pm.box_iou(pm.rec_pred_box(m), gt) == pytest.approx(0.5)  # 6 / 12; with +1 areas it would be 0.6
    assert pm.rec_hit(m, gt) is True
    assert pm.rec_hit(m, [2.0, 2.0, 7.0, 5.0]) is False  # 6 / 15
    assert pm.rec_hit(None, gt) is False


def test_rec_components_are_8_connected():
    m = np.zeros((10, 10), dtype=bool)
    m[0, 0:5] = True  # 5 px
    m[1, 5:10] = True  # 5 px, touching the first only diagonally: one 10-px component under 8-connectivity
    assert pm.rec_pred_box(m) == [0.0, 0.0, 9.0, 1.0]
    assert pm.rec_pred_box(np.eye(5, dtype=bool)) is None  # a 5-px diagonal is one component, under 10 px
    assert pm.drop_small_components(np.eye(12, dtype=bool)).sum() == 12


def test_pixelqa_object_volume_iou_and_pixel_f1():
    gt, pred = _clip(), _clip()
    gt[0, 0, :3] = True
    gt[1, 0, :2] = True  # |G| = 5
    pred[0, 0, :3] = True
    pred[1, 1, :1] = True  # |P| = 4, I = 3, U = 6
    j, f = pm.pixelqa_object(pred, gt)
    assert j == pytest.approx(0.5, abs=1e-6)  # volume IoU 3 / 6; the per-frame mean would be (1 + 0) / 2 = 0.5 too,
    assert f == pytest.approx(2 * 0.75 * 0.6 / 1.35, abs=1e-5)  # but F tells: pixel F1 = 0.6667, per-frame F1 0.5
    gt[1] = False
    pred[1] = False  # an empty frame adds nothing to a volume score (a frame mean would count it as 1)
    assert pm.pixelqa_object(pred, gt)[0] == pytest.approx(1.0, abs=1e-6)
    assert pm.pixelqa_object(_clip(), _clip()) == (0.0, 0.0)  # both empty scores 0, not 1


def test_groundmore_window():
    # window [(1 - 0) * 6, (3 - 0) * 6 - 1] = [6, 17]
    assert pm.groundmore_window([0, 6, 12, 17, 18, 24], start=1, end=3) == [False, True, True, True, False, False]
    assert pm.groundmore_window([0, 6, 12, 18], start=11, end=13, clip_start=10) == [False, True, True, False]


def test_expression_jf_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="pred/gt"):
        pm.expression_jf(_clip(2), _clip(3))


def _check_ans(num_options: int, response: str) -> str | None:
    """eval_general.check_ans as released, returning the letter it reads (None where it logs ERROR or would
    stop with an IndexError on an empty token)."""
    b = response.lower().split(" ")[0].replace("(", "").replace(")", "").replace(".", "")
    if len(b) != 1:
        if not b:
            return None  # the release: b[0] raises IndexError
        b = b[0]
    return b if b in [chr(ord("a") + i) for i in range(num_options)] else None


MCQ_TEXTS = {
    # text: (official index, lenient index), four options
    "B) the man": (1, 1),
    "(c)": (2, 2),
    "B.": (1, 1),
    "b": (1, 1),
    "A": (0, 0),
    "B\nthe man": (1, 1),  # split(' '): the newline stays in the token, its first character counts
    "\nB": (None, 1),  # the release reads the newline
    " B": (None, 1),  # the release reads an empty token
    "The best option is (D) a dog": (None, 3),  # 't'
    "Best Option: (A)": (1, 0),  # 'best' -> 'b'
    "Answer: C": (0, 2),  # 'answer:' -> 'a'
    "answer:(d)": (0, 3),
    "": (None, None),
    "   ": (None, None),
    "E": (None, None),  # four options only
    "()": (None, None),
    "7": (None, None),
}


@pytest.mark.parametrize(("text", "official", "lenient"), [(t, *v) for t, v in MCQ_TEXTS.items()])
def test_mcq_parser_reads_like_the_official_script_and_lenient_on_request(text, official, lenient):
    released = _check_ans(4, text)
    assert official == (None if released is None else ord(released) - ord("a"))  # the table is the release's
    assert answers.parse_option(text, 4) == official
    assert answers.parse_option(text, 4, lenient=True) == lenient


@pytest.mark.parametrize("bad", [None, 42])
def test_mcq_parser_never_raises(bad):
    assert answers.parse_option(bad, 4) is None and answers.parse_option(bad, 4, lenient=True) is None


def test_first_character_rule():
    assert answers.first_character("(b). because") == "b"
    assert answers.first_character("Cat") == "c"
    assert answers.first_character(".") is None
    assert answers.parse_option("B", 0) is None


def test_templates_are_the_official_ones():
    assert templates.segmentation_prompt("red car") == "Please segment the red car in this video."
    assert templates.segmentation_prompt("the dog", "image") == "Please segment the the dog in this image."  # as run
    assert templates.segmentation_prompt("Which car moves?") == "Which car moves? Please provide the segmentation mask."
    assert (
        templates.segmentation_prompt("Who opens the door?", family="question")
        == "Who opens the door? Please answer the question and provide the segmentation mask."
    )
    assert (
        templates.segmentation_prompt("a man in red", family="description")
        == "Please segment the object according to the description: a man in red"
    )
    assert templates.mcq_prompt("Q?", ["x", "y"]) == "Q?\nOptions:\n(A) x\n(B) y\nPlease only give the best option."
    assert (
        templates.official_mcq_text("Q?\nOptions:\n(A) x\nAnswer with the option's letter.")
        == "Q?\nOptions:\n(A) x\nPlease only give the best option."
    )
    with pytest.raises(ValueError, match="family"):
        templates.segmentation_prompt("x", family="nope")


def test_judge_replies_parse_and_average(tmp_path):
    import json

    from pixelqa.eval import judge

    good = "Subject Correspondence: 4\nAppearance Description: 3\nTemporal Description: 5\nHallucination Detection: 2"
    short = "SC: 2, AD: 2, TD: 2, HD: 4"
    assert judge.parse_scores(good) == {"SC": 4.0, "AD": 3.0, "TD": 5.0, "HD": 2.0}
    assert judge.parse_scores("Subject Correspondence: 4") is None and judge.parse_scores(None) is None
    row = judge.aggregate([good, short, "no scores"])
    assert row["SC"] == 3.0 and row["HD"] == 3.0 and row["All"] == pytest.approx((3 + 2.5 + 3.5 + 3) / 4)
    assert (row["judged"], row["unparsed"]) == (2, 1)
    (tmp_path / "in.json").write_text(json.dumps([{"pred": "a"}, {"pred": "b"}]))
    (tmp_path / "r.json").write_text(json.dumps([good, short]))
    assert judge.score_file(tmp_path / "in.json", tmp_path / "r.json", "gpt-4o")["judge"] == "gpt-4o"
    (tmp_path / "r.json").write_text(json.dumps([good]))
    with pytest.raises(ValueError, match="got 1 replies, expected a JSON list of 2"):
        judge.score_file(tmp_path / "in.json", tmp_path / "r.json", "gpt-4o")
