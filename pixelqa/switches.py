"""The model's closed-choice switches (docs/departures.md) and their values, the released one first.

A leaf module (no imports), so the recipe loader (pixelqa.config) checks them when a recipe loads, before any work,
and the model (UniPixel.check_choices) when it is built, from one table. It is also the release rule's table:
`pixelqa.model.release.apply_release_config` derives from it what a released UniPixel folder fixes.

The release rule: loading a released folder sets every switch below to its released value (the first), except the
values in RELEASE_KEEPS (a training loss or a decoding procedure: they change nothing the released weights compute),
and sets RELEASED_SETTINGS. So a new value is reset to the released one unless it is listed as kept.

Adding a switch value (e.g. `memory.pooling: max`) touches:
1. SWITCH_CHOICES below: the value, after the released one (recipes and the model then accept it);
2. the implementation where the switch is read (e.g. `UniPixel._pool` for memory.pooling; grep the key) and the
   value list in the field's comment in pixelqa/model/config.py;
3. the release rule: nothing when a released folder must reset it (the default); an entry in RELEASE_KEEPS, with
   the reason, when it leaves what the released weights compute unchanged and may run on them;
4. docs/departures.md: the switch's row names the value (`model.<key>=<value>` or `<value>`) and why it exists.
A new switch also needs its field in pixelqa/model/config.py, defaulting to the released value, which must be what
the code computed before the switch existed (a config saved earlier loads without the key and gets the default).
`LEGACY_SWITCHES` in pixelqa/model/unipixel.py lists what configs saved before the released structure (no
`seg_head` key) ran; add the switch there only if those configs computed something other than its default.
tests/test_extending.py checks 1, 3 and 4.
"""

from __future__ import annotations

SWITCH_CHOICES: dict[str, tuple[str, ...]] = {
    "seg_head": ("released", "token"),
    "prompt_encoder.kind": ("released", "fourier"),
    "memory.pooling": ("window", "raster", "area"),
    "loss.mask": ("released", "single"),
    "mask_decoder.propagation": ("forward", "bidirectional"),
}

# switch -> {non-released value: why a released folder keeps it}; every other value is reset to the released one
RELEASE_KEEPS: dict[str, dict[str, str]] = {
    "loss.mask": {"single": "a training loss: fine-tuning a release with it changes no forward computation"},
    "mask_decoder.propagation": {
        "bidirectional": "a decoding procedure at inference, run on any trained weights (experiments/propagation.yaml)"
    },
}

# settings outside SWITCH_CHOICES (open types) that a released folder fixes: config key -> released value
RELEASED_SETTINGS: dict[str, object] = {
    "mask_decoder.prompt_padding": "released",
    "mask_decoder.antialias": True,
    "mask_decoder.multimask": True,
}


def released_value(key: str) -> str:
    """The released value of switch `key` (the first of its choices)."""
    return SWITCH_CHOICES[key][0]


def release_value(key: str, value: str) -> str:
    """The value switch `key` takes when a released folder loads with `value` in the recipe."""
    return value if value in RELEASE_KEEPS.get(key, {}) else released_value(key)
