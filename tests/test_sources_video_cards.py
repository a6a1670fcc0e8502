"""The dataset cards of the video sources: present, valid, and carrying the paper's Table 12 repeat factors."""

from __future__ import annotations

import pytest

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import load_card

# Table 12 of the paper: (stage, repeat) per source; evaluation-only sources have no stage.
PAPER_STAGES = {
    "ref_youtube_vos": {"stage2": 3, "stage3": 5},
    "ref_davis17": {"stage3": 10},
    "mevis": {"stage3": 5},
    "revos": {"stage3": 5},
    "ref_sav": {"stage3": 3},
    "lvvis": {"stage3": 3},
    "vicas": {"stage3": 3},
    "groundmore": {"stage3": 3},
    "instit_image_short_caption": {"stage1": 1},
    "instit_video_qa": {"stage3": 5},
    "instit_qa_memory": {"stage3": 3},
    "videorefer_short_caption": {"stage1": 1},
    "videorefer_detailed_caption": {"stage3": 5},
    "videorefer_qa": {"stage3": 5},
    "videorefer_qa_memory": {"stage3": 3},
    "videogpt_plus": {"stage3": 1},
    "videorefer_bench_q": {},
    "videorefer_bench_d": {},
    "pixelqa": {},
    "mvbench": {},
}


@pytest.mark.parametrize("name", sorted(PAPER_STAGES))
def test_card_matches_source(name):
    card = load_card(name)
    src = get_source(name)
    assert card.name == name
    assert list(card.splits) == list(src.splits)
    assert {s: u.repeat for s, u in card.stages.items()} == PAPER_STAGES[name]
    assert all(u.split == "train" for u in card.stages.values())
    assert src.task in card.tasks
