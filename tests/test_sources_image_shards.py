"""Image sources through the real shard builder: every fixture sample validates, round-trips and is rebuilt
identically; the builder's worker processes give the same shards as in-process conversion."""

from __future__ import annotations

import pytest
from fixtures_image import (
    build_ade20k,
    build_llava,
    build_osprey,
    build_paco,
    build_reasonseg,
    build_refer,
)

from pixelqa.data.catalog import get_source
from pixelqa.data.registry import RejectedSample, SkippedSample
from pixelqa.data.schema import Sample
from pixelqa.data.shards import build_shards, iter_records, list_shards, shard_dir

CASES = [
    ("refcoco", build_refer, "train"),
    ("refcoco", build_refer, "val"),
    ("reasonseg", build_reasonseg, "train"),
    ("ade20k", build_ade20k, "train"),
    ("paco_lvis", build_paco, "train"),
    ("osprey_conversation", build_osprey, "train"),
    ("osprey_conversation", lambda root: build_osprey(root, broken_record=True), "train"),
    ("osprey_detail_description", build_osprey, "train"),
    ("llava_mix665k", build_llava, "train"),
]


@pytest.mark.parametrize(("source", "builder", "split"), CASES)
def test_image_source_builds_and_round_trips(tmp_path, source, builder, split):
    raw = tmp_path / "raw"
    builder(raw)
    everything = list(get_source(source).samples(raw, split))
    direct = [s for s in everything if not isinstance(s, RejectedSample)]
    manifest = build_shards(source, raw, tmp_path / "out", split=split, workers=1, on_error="skip", progress=False)
    # The fixtures' deliberately bad records are the manifest's rejects, one each, with the converter's reason.
    assert [(r["key"], r["reason"]) for r in manifest["rejects"]] == [
        (s.key, f"RecordError: {s.reason}")
        for s in everything
        if isinstance(s, RejectedSample) and not isinstance(s, SkippedSample)
    ]
    # items that hold nothing to ask (ReasonSeg's train image without a target) are the manifest's skipped
    assert [(r["key"], r["reason"]) for r in manifest["skipped"]] == [
        (s.key, s.reason) for s in everything if isinstance(s, SkippedSample)
    ]
    shards = list_shards(shard_dir(tmp_path / "out", source, split))
    back = [Sample.from_record(r) for r in iter_records(shards)]
    assert [s.key for s in back] == [s.key for s in direct]
    for a, b in zip(direct, back, strict=True):
        assert b.validate(check_frames=True).to_json() == a.validate().to_json()
        assert b.media.frames == a.media.frames


def test_worker_processes_give_identical_shards(tmp_path):
    raw = tmp_path / "raw"
    build_refer(raw)
    build_shards("refcoco", raw, tmp_path / "one", split="val", workers=1, progress=False)
    build_shards("refcoco", raw, tmp_path / "two", split="testB", workers=2, progress=False)
    build_shards("refcoco", raw, tmp_path / "two", split="val", workers=2, progress=False)
    one = list_shards(shard_dir(tmp_path / "one", "refcoco", "val"))
    two = list_shards(shard_dir(tmp_path / "two", "refcoco", "val"))
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
