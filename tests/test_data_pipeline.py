"""End to end on real-format fixtures: converter -> build_shards -> make_dataset -> Collator -> Batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixelqa.data.collate import Collator
from pixelqa.data.loader import make_dataset
from pixelqa.data.shards import build_shards
from tests import fixtures_image, fixtures_video
from tests.tiny_processor import tiny_processor

torch.set_num_threads(1)

CASES = [
    (fixtures_image.build_refer, "refcoco", "res"),
    (fixtures_image.build_osprey, "osprey_conversation", "region_qa"),
    (fixtures_video.build_revos, "revos", "reason_vos"),
]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.mark.parametrize("builder,source,task", CASES, ids=[c[1] for c in CASES])
def test_fixture_source_to_batch(tmp_path: Path, processor, builder, source, task):
    builder(tmp_path / "raw")
    m = build_shards(source, tmp_path / "raw", tmp_path / "shards", "train", progress=False)
    assert m["num_samples"] >= 1 and m["num_rejects"] == 0 and m["raw_files"]
    samples = list(make_dataset([tmp_path / "shards" / source / "train"], train=False, num_frames=4))
    assert len(samples) == m["num_samples"] and {s.task for s in samples} == {task}
    b = Collator(processor, num_frames=4)(samples)
    seg = processor.tokenizer.convert_tokens_to_ids("<|seg|>")
    ref = processor.tokenizer.convert_tokens_to_ids("<|ref|>")
    for i, s in enumerate(samples):
        assert int((b.input_ids[i] == seg).sum()) == b.seg_masks[i].shape[0] == len(s.seg_object_ids())
        assert int((b.input_ids[i] == ref).sum()) == len(b.prompts[i]) == len(s.prompts)
        assert b.frames[i].shape[0] == min(s.media.num_frames, 4)
        assert b.seg_masks[i].shape[1:] == (b.frames[i].shape[0], *s.media.size)
        assert (b.labels[i] != -100).any()
