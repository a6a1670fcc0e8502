"""`model.tiny`: the sizes of the tiny preset's random-init Qwen2.5-VL, set from a recipe; defaults = the test model."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import frames, make_batch, rect, tiny_config

from pixelqa.config import load_recipe, to_object
from pixelqa.model import backbone as bb
from pixelqa.model.config import TinySizeConfig
from pixelqa.prompt_format import SEG


def test_default_sizes_are_the_test_model():
    cfg = bb.tiny_qwen_config(bb.build_tiny_tokenizer())
    text, vit = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (64, 128, 2)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    assert text.rope_parameters["mrope_section"] == [2, 3, 3]
    assert (vit.depth, vit.hidden_size, vit.intermediate_size, vit.num_heads) == (2, 64, 128, 2)
    assert (vit.out_hidden_size, vit.fullatt_block_indexes) == (64, [1])


def test_recipe_sizes_reach_the_backbone_and_it_trains():
    recipe = to_object(
        load_recipe(["recipe=stage3", "model.tiny.hidden=96", "model.tiny.layers=3", "model.tiny.vit_depth=3"])
    )
    assert recipe.model.tiny == TinySizeConfig(hidden=96, layers=3, heads=4, vit_hidden=64, vit_depth=3, vit_heads=2)
    from pixelqa.model import UniPixel

    model = UniPixel(tiny_config(tiny=recipe.model.tiny))
    text, vit = model.qwen.config.text_config, model.qwen.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, vit.depth, vit.out_hidden_size) == (96, 3, 3, 96)
    # rotary split of the 12-wide half head in the released 2 : 3 : 3 proportion; the last ViT block sees the frame
    assert text.rope_parameters["mrope_section"] == [3, 4, 5] and vit.fullatt_block_indexes == [2]
    assert model.new_token_embed.shape[-1] == 96
    batch = make_batch(
        model.processor,
        [
            {
                "frames": frames(1),
                "kind": "image",
                "user": "Please segment the square.",
                "answer": f"It is {SEG}.",
                "seg_masks": rect(112, 112, 20, 60, 30, 70)[None, None],
                "seg_valid": torch.ones(1, 1, dtype=torch.bool),
            }
        ],
    )
    out = model(batch)
    assert torch.isfinite(out.loss) and out.pred_masks is not None


@pytest.mark.parametrize(
    ("field", "value", "others", "expected"),
    [
        ("hidden", 0, {}, "positive integer"),
        ("hidden", 72, {}, "multiple of 4 x heads"),
        ("heads", 3, {"hidden": 96}, "even number"),
        ("vit_hidden", 66, {}, "multiple of 4 x vit_heads"),
    ],
)
def test_bad_sizes_name_the_field(field, value, others, expected):
    sizes = TinySizeConfig(**{field: value, **others})
    with pytest.raises(ValueError, match=rf"model\.tiny\.{field}: got {value}.*{expected}"):
        bb.tiny_qwen_config(bb.build_tiny_tokenizer(), sizes)


def test_a_saved_config_reads_back_with_every_nested_block():
    """`save_pretrained` folders keep their config as JSON: every nested block (tiny sizes too) comes back typed."""
    import dataclasses

    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.unipixel import config_from_dict

    cfg = UniPixelConfig()
    cfg.tiny.hidden, cfg.loss.dice, cfg.mask_decoder.propagation = 128, 2.0, "bidirectional"
    back = config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and back.tiny.hidden == 128
    assert config_from_dict(dataclasses.asdict(UniPixelConfig())) != cfg  # a changed value is seen
