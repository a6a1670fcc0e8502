"""The dataset cards of the image sources: they load, name a registered source, and carry Table 12's repeats."""

from __future__ import annotations

import pytest

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import load_card

# UniPixel paper Table 12 (stage 2 and stage 3 repeat factors); None = not used in that stage
TABLE12 = {
    "refcoco": (5, 10),
    "refcoco_plus": (5, 10),
    "refcocog": (5, 10),
    "refclef": (5, 10),
    "reasonseg": (None, 10),
    "ade20k": (None, 3),
    "cocostuff": (None, 3),
    "mapillary": (None, 3),
    "paco_lvis": (None, 3),
    "pascal_part": (None, 3),
    "osprey_conversation": (None, 5),
    "osprey_detail_description": (None, 5),
    "osprey_pos_neg": (None, 5),
    "llava_mix665k": (None, 1),
    "refcocog_google": (None, None),
    "osprey_short_form": (None, None),
    "osprey_part_level": (None, None),
}


@pytest.mark.parametrize("name", sorted(TABLE12))
def test_image_card_matches_source_and_table12(name):
    card = load_card(name)
    src = get_source(name)
    assert card.name == name
    assert set(card.splits) == set(src.splits), "card splits must be the converter's splits"
    stage2, stage3 = TABLE12[name]
    assert (card.stages["stage2"].repeat if "stage2" in card.stages else None) == stage2
    assert (card.stages["stage3"].repeat if "stage3" in card.stages else None) == stage3
    assert "stage1" not in card.stages
    assert all(use.split == "train" for use in card.stages.values())
