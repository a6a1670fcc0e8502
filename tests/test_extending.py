"""What docs/extending.md promises an extension: a card of one's own stays out of the paper's mixtures, every model
switch value has its release rule and its departures.md mention, and a registered protocol is a benchmark by name
for the official suite and for teacher-forced `eval.benchmark` alike."""

from __future__ import annotations

import re
import shutil
from functools import partial
from operator import attrgetter
from pathlib import Path

import pytest

from pixelqa.data import registry
from pixelqa.data.__main__ import main as data_main
from pixelqa.data.mixture import PAPER_SAMPLES, MixtureError, load_mixture
from pixelqa.data.registry import list_cards, load_card, parse_card
from pixelqa.switches import RELEASE_KEEPS, RELEASED_SETTINGS, SWITCH_CHOICES

ROOT = Path(__file__).resolve().parents[1]
OWN_CARD = """name: toyrvos
tasks: [rvos]
license: CC0
homepage: https://example.org/toyrvos
citation: "ToyRVOS (invented for a test)"
raw_layout: "<root>/toyrvos.json"
splits: [train, val]
samples: {train: 18, val: 6}
stages:
  stage3: {repeat: 1, split: train}
"""


def cards_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """A copy of the repository's cards plus `text` as datasets/toyrvos.yaml, read by the registry instead."""
    folder = tmp_path / "datasets"
    shutil.copytree(ROOT / "datasets", folder)
    (folder / "toyrvos.yaml").write_text(text)
    monkeypatch.setattr(registry, "datasets_dir", lambda: folder)
    return folder


def entries(name: str) -> set[tuple[str, str, float]]:
    """A mixture as a set of (source, split, repeat)."""
    return {(e.name, e.split, e.repeat) for e in load_mixture(name)}


# ---------------------------------------------------------------------------------------------- cards


def test_a_new_card_with_stages_stays_out_of_the_paper_mixtures(tmp_path, monkeypatch, capsys):
    cards_with(tmp_path, monkeypatch, OWN_CARD)
    assert "toyrvos" in list_cards() and load_card("toyrvos").stages["stage3"].repeat == 1
    assert not load_card("toyrvos").paper
    names = [e.name for e in load_mixture("stage3")]
    assert "toyrvos" not in names and len(names) == 28  # paper Table 12, as before the card
    data_main(["mixture", "recipe=stage3"])
    out = capsys.readouterr().out
    assert "total effective samples per epoch: 5,940,000" in out and "toyrvos" not in out
    # the way in: a mixture of one's own names it (here beside a paper source), its count read from the card
    own = tmp_path / "mine.yaml"
    own.write_text("sources:\n  - {name: toyrvos, split: train, repeat: 2}\n  - {name: ref_davis17, repeat: 10}\n")
    data_main(["mixture", str(own)])
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert lines["toyrvos"][1:5] == ["train", "2", "18", "card"]


def test_a_paper_flag_copied_onto_a_new_card_is_refused_naming_the_way_out(tmp_path, monkeypatch):
    folder = cards_with(tmp_path, monkeypatch, OWN_CARD + "paper: true\n")
    message = (
        rf"{re.escape(str(folder / 'toyrvos.yaml'))}: paper: true, but 'toyrvos' is not a source of paper Table 12 "
        r".*remove `paper: true`.*recipes/data/<name>\.yaml \(docs/extending\.md\)"
    )
    with pytest.raises(MixtureError, match=message):
        load_mixture("stage3")
    assert entries("sft1m")  # a mixture file is not assembled from the cards: unaffected


def test_the_paper_flag_marks_table_12_exactly_and_stage_mixtures_equal_their_recipes():
    paper = {name for name in list_cards() if load_card(name).paper}
    assert paper == set(PAPER_SAMPLES)  # every Table 12 source, and the demo's synthetic is not one
    assert not load_card("synthetic").paper and load_card("synthetic").stages  # its stages join no paper mixture
    for stage, recipe in (("stage1", "stage1-mix"), ("stage2", "stage2-mix"), ("stage3", "sft1m")):
        assert entries(stage) == entries(recipe), stage  # README / mixture.py: sft1m = stage 3
    card = {"name": "x", "tasks": ["res"], "license": "l", "homepage": "h", "citation": "c", "raw_layout": "r"}
    card["splits"] = ["train"]
    with pytest.raises(ValueError, match=r"x\.paper: got 'yes', expected true or false"):
        parse_card({**card, "paper": "yes"}, where="x")
    with pytest.raises(ValueError, match=r"x\.paper: true without stages"):
        parse_card({**card, "paper": True}, where="x")


# ---------------------------------------------------------------------------------------------- switches


def test_every_switch_has_its_released_value_a_release_rule_and_a_departures_row():
    table = [line for line in (ROOT / "docs" / "departures.md").read_text().splitlines() if line.startswith("|")]
    for key, choices in SWITCH_CHOICES.items():
        assert len(choices) == len(set(choices)) >= 2, key  # the released value first, then the alternatives
        rows = [row for row in table if f"model.{key}" in row]
        assert rows, f"docs/departures.md has no row naming model.{key}"
        for value in choices[1:]:
            assert any(re.search(rf"[`=]{re.escape(value)}`", row) for row in rows), f"{key}={value} not in its row"
    for key, kept in RELEASE_KEEPS.items():
        assert key in SWITCH_CHOICES and kept, key
        for value, why in kept.items():
            assert value in SWITCH_CHOICES[key][1:] and why.strip(), (key, value)


def released_config(tmp_path: Path, key: str, value: str):
    """A default UniPixelConfig with switch `key` set to `value`, after `apply_release_config` of a release."""
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.release import ModelFolder, apply_release_config

    cfg = UniPixelConfig()
    *path, leaf = key.split(".")
    setattr(attrgetter(".".join(path))(cfg) if path else cfg, leaf, value)
    apply_release_config(cfg, ModelFolder("release", tmp_path, {"sam2_config": "configs/sam2.1_hiera_micro"}))
    return cfg


@pytest.mark.parametrize("key, value", [(k, v) for k, values in SWITCH_CHOICES.items() for v in values])
def test_a_released_folder_resets_every_switch_value_it_does_not_keep(tmp_path, key, value):
    cfg = released_config(tmp_path, key, value)
    kept = value in RELEASE_KEEPS.get(key, {})
    assert attrgetter(key)(cfg) == (value if kept else SWITCH_CHOICES[key][0])
    for setting, released in RELEASED_SETTINGS.items():
        assert attrgetter(setting)(cfg) == released


def test_a_new_switch_value_is_reset_by_a_released_folder_without_an_edit(tmp_path, monkeypatch):
    monkeypatch.setitem(SWITCH_CHOICES, "memory.pooling", (*SWITCH_CHOICES["memory.pooling"], "max"))
    assert released_config(tmp_path, "memory.pooling", "max").memory.pooling == "window"


# ---------------------------------------------------------------------------------------------- benchmarks


def test_a_registered_protocol_is_a_benchmark_by_name_in_both_routes():
    from pixelqa.eval import get_protocol, list_benchmarks
    from pixelqa.eval.official import (
        MCQProtocol,
        VideoSegProtocol,
        get_official,
        list_protocols,
        register_protocol,
        unregister_protocol,
    )
    from pixelqa.eval.video_seg import evaluate_video_seg

    @register_protocol("toy_rvos_ext")
    class ToyProtocol(VideoSegProtocol):
        """A video benchmark of an extension, named after its source."""

        def __init__(self) -> None:
            super().__init__("toy_rvos_ext")

    register_protocol("toy_mcq_ext", lambda: MCQProtocol("toy_mcq_ext"))
    try:
        assert isinstance(get_official("toy_rvos_ext"), ToyProtocol)  # the suite route (`protocol:` in a suite)
        assert list_protocols()[-2:] == ["toy_rvos_ext", "toy_mcq_ext"]
        assert "toy_rvos_ext" in list_benchmarks()  # the teacher-forced route: eval.benchmark=toy_rvos_ext
        fn = get_protocol("toy_rvos_ext")
        assert isinstance(fn, partial) and fn.func is evaluate_video_seg and fn.keywords == {"source": "toy_rvos_ext"}
        assert isinstance(get_official("toy_mcq_ext"), MCQProtocol)
        assert "toy_mcq_ext" not in list_benchmarks()  # no teacher-forced video scoring for a choice benchmark
        with pytest.raises(ValueError, match="protocol 'toy_rvos_ext' is already registered"):
            register_protocol("toy_rvos_ext", ToyProtocol)
    finally:
        unregister_protocol("toy_rvos_ext")
        unregister_protocol("toy_mcq_ext")
    with pytest.raises(ValueError, match=r"eval\.benchmark: got 'toy_rvos_ext', expected one of \['synthetic', "):
        get_protocol("toy_rvos_ext")
    with pytest.raises(ValueError, match=r"benchmark: got 'toy_rvos_ext', expected one of"):
        get_official("toy_rvos_ext")
    with pytest.raises(ValueError, match=r"without '\+', '/' or spaces"):
        register_protocol("toy+switch", ToyProtocol)


def test_the_built_in_benchmarks_are_unchanged():
    """In order and under their names, whatever an extension registers besides them."""
    from pixelqa.eval import list_benchmarks
    from pixelqa.eval.official import PROTOCOLS, list_protocols
    from pixelqa.eval.video_seg import video_seg_benchmarks

    video = ["revos", "mevis", "ref_youtube_vos", "ref_davis17", "ref_sav", "groundmore"]
    assert [name for name in video_seg_benchmarks() if name in video] == video
    assert "mevis_server" not in video_seg_benchmarks()  # it reads mevis's shards: not a teacher-forced name
    image = ["refcoco", "refcoco_plus", "refcocog", "refcocog_google", "refclef", "reasonseg"]
    benchmarks = list_benchmarks()
    assert benchmarks[0] == "synthetic" and benchmarks[-len(image) :] == image
    assert benchmarks[1 : -len(image)] == list(video_seg_benchmarks())
    builtin = [*video[:2], "mevis_server", *video[2:], *image[:3], "reasonseg", "videorefer_bench_q"]
    builtin += ["videorefer_bench_d", "pixelqa", "mvbench"]
    assert [name for name in list_protocols() if name in builtin] == builtin and set(builtin) <= set(PROTOCOLS)
