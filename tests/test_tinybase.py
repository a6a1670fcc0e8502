"""Pre-training a tiny base (`pixelqa.tinybase`): the CLI writes a Qwen2.5-VL base folder and a SAM 2.1 checkpoint
that `model=tiny model.path=... model.mask_decoder.checkpoint=...` loads weight for weight; the ViT pre-training
teaches tokens the shapes under them; SAM's batched decoding of several clips equals decoding them one by one; the
SAM targets carry each object's drawn attributes and a "what" prompt sums the rows of the attributes it names; the
option-lookup questions name the right letter; bad arguments exit 2."""

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelqa.config import RecipeError, load_recipe, to_object
from pixelqa.data.loader import object_masks
from pixelqa.data.synthetic import ATTRIBUTES, COLOURS, LETTERS, SHAPES, SIZE_WORDS, make_sample
from pixelqa.fit import check_model
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.mask_decoder import MaskDecoder
from pixelqa.model.release import qwen_key
from pixelqa.model.unipixel import UniPixel
from pixelqa.tinybase import CARD_FILE, QWEN_DIR, SAM_FILE
from pixelqa.tinybase.sam import SamSettings, SemanticPrompts, decode_targets, make_targets, prompt_kinds
from pixelqa.tinybase.vlm import LABELS, VisionSettings, frame_labels, lookup_sample, pretrain_vision


def _base_model(qwen_dir, sam_file) -> UniPixel:
    """UniPixel on a base folder, as model=tiny with model.path / model.mask_decoder.checkpoint builds it."""
    cfg = UniPixelConfig(path=str(qwen_dir))
    cfg.mask_decoder.checkpoint = str(sam_file)
    return UniPixel(cfg).eval()


def _qwen_equal(model: UniPixel, tensors: dict) -> bool:
    ours = model.qwen.state_dict()
    return all(torch.equal(ours[qwen_key(k)], v) for k, v in tensors.items())


@pytest.mark.slow
def test_cli_builds_a_base_that_the_tiny_model_loads(tmp_path):
    out = tmp_path / "base"
    cmd = [sys.executable, "-m", "pixelqa.tinybase", "--out", str(out), "--vit-steps", "2", "--vlm-steps", "2"]
    cmd += ["--sam-steps", "2", "--pool", "8", "--eval-samples", "4", "--jobs", "2"]  # the SAM half in a 2nd process
    cmd += ["--what-share", "0.5"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    card = json.loads((out / CARD_FILE).read_text())
    assert card["qwen"]["vlm"]["settings"]["steps"] == 2 and card["sam"]["settings"]["steps"] == 2
    assert card["sam"]["settings"]["what_share"] == 0.5
    assert set(card["sam"]["held_out_mean_iou"]) == {"point", "box", "what"}  # "what" prompts scored too
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != CARD_FILE]
    assert sorted(card["files"]) == sorted(files) and len(files) >= 10
    for name, digest in card["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name

    qwen_file = out / QWEN_DIR / "model.safetensors"
    qwen = load_file(str(qwen_file))
    sam = torch.load(out / SAM_FILE, map_location="cpu", weights_only=True)["model"]
    model = _base_model(out / QWEN_DIR, out / SAM_FILE)
    assert len(qwen) == len(model.qwen.state_dict()) and _qwen_equal(model, qwen)  # every tensor, each equal
    assert model.qwen.config.text_config.hidden_size == card["qwen"]["sizes"]["hidden"] == 128  # the folder's sizes
    ours = model.mask_decoder.sam.state_dict()
    assert all(torch.equal(ours[k], v.float()) for k, v in sam.items()) and len(sam) == len(ours)
    assert not _qwen_equal(UniPixel(UniPixelConfig()), {k: v for k, v in qwen.items() if "layers.0." in k})

    # a perturbed file: the model built before it no longer matches, one built from it does
    qwen["model.layers.0.self_attn.q_proj.weight"][0, 0] += 1e-3
    save_file(qwen, str(qwen_file), metadata={"format": "pt"})
    assert not _qwen_equal(model, qwen)
    assert _qwen_equal(_base_model(out / QWEN_DIR, out / SAM_FILE), qwen)

    # a recipe with model=tiny and a base folder passes fit's model check; a wrong folder is a recipe error
    recipe = to_object(load_recipe(["recipe=stage3", f"model.path={out / QWEN_DIR}"]))
    check_model(recipe)
    recipe = to_object(load_recipe(["recipe=stage3", f"model.path={out}"]))  # the folder above: no config.json
    with pytest.raises(RecipeError, match="model.path"):
        check_model(recipe)


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    from pixelqa.tinybase.__main__ import main

    def tinybase(*args: str) -> str:
        """Run the CLI in this process (a subprocess each cost 2 s of imports); assert status 2, return stderr."""
        with pytest.raises(SystemExit) as done:
            main(list(args))
        assert done.value.code == 2
        return capsys.readouterr().err

    assert "--vlm-steps: got 0, expected an integer >= 1" in tinybase("--out", str(tmp_path / "b"), "--vlm-steps", "0")
    assert "--what-share: got 1.5, expected a number in [0, 1]" in tinybase(
        "--out", str(tmp_path / "b"), "--what-share", "1.5"
    )
    assert not (tmp_path / "b").exists()
    assert "--out" in tinybase()
    # the base replaces --out whole: a folder of other files, a file or '.' is refused before any training
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (tmp_path / "file.bin").write_bytes(b"x")
    for out, said in (
        (mine, "holds files a tiny base does not"),
        (tmp_path / "file.bin", "exists and is not a folder"),
        (".", "names no folder of its own"),
    ):
        err = tinybase("--out", str(out))
        assert f"--out: {str(out)!r} {said}" in err and len(err.strip().splitlines()) == 1, err
    assert (mine / "notes.txt").read_text() == "precious" and (tmp_path / "file.bin").read_bytes() == b"x"


def test_frame_labels_mark_the_cells_under_each_shape():
    sample = make_sample(3, split="pretrain", task="res")
    labels = frame_labels(sample, 0, 28, 20)
    assert labels.shape == (16, LABELS)
    ids = sorted(sample.objects)
    masks, _ = object_masks(sample, ids)
    shapes = {s["id"]: s for s in sample.meta["shapes"]}
    # by hand: the cells holding >= 20 pixels of a shape carry its colour, kind and size
    expected = torch.zeros(16, LABELS)
    for k, oid in enumerate(ids):
        for cell in range(16):
            r, c = divmod(cell, 4)
            if masks[k, 0, r * 28 : r * 28 + 28, c * 28 : c * 28 + 28].sum() >= 20:
                s = shapes[oid]
                expected[cell, list(COLOURS).index(s["colour"])] = 1
                expected[cell, len(COLOURS) + SHAPES.index(s["kind"])] = 1
                expected[cell, len(COLOURS) + len(SHAPES) + SIZE_WORDS.index(s["size"])] = 1
    assert torch.equal(labels, expected) and labels.sum() > 0
    # a label grid taken one cell to the right is another grid
    assert not torch.equal(labels, expected.view(4, 4, -1).roll(1, dims=1).view(16, -1))


@pytest.mark.slow
def test_vision_pretraining_teaches_the_tokens_the_shapes_under_them():
    torch.manual_seed(0)
    model = UniPixel(UniPixelConfig())
    trained = pretrain_vision(model, VisionSettings(steps=150, pool=300), log=lambda s: None)
    print(trained, untrained := pretrain_vision(UniPixel(UniPixelConfig()), VisionSettings(steps=1, pool=64, lr=1e-9)))
    # balanced accuracy (0.5 for a constant guess); 0.68 measured after these 150 steps, 0.97 after the CLI's 1500
    assert trained >= 0.62 and untrained <= 0.56
    assert not any(p.requires_grad for p in model.qwen.model.visual.parameters())  # frozen again afterwards


def test_sam_decodes_several_clips_as_one_batch_exactly():
    torch.manual_seed(0)
    decoder = MaskDecoder("micro", 128, prompt_padding="none").eval()
    clips = [t for t in make_targets(12, "pretrain", 0, 4) if t.frames.shape[0] == 4][:2]
    assert len(clips) == 2
    rng = np.random.default_rng(0)
    with torch.no_grad():
        together = decode_targets(decoder, clips, ["box"] * sum(len(c.masks) for c in clips), rng)
        alone = [decode_targets(decoder, [c], ["box"] * len(c.masks), rng) for c in clips]
        swapped = decode_targets(decoder, clips[::-1], ["box"] * sum(len(c.masks) for c in clips), rng)
    # the logits before the object-score gating (the random decoder gates every frame off)
    one_by_one = torch.cat([a.raw for a in alone])
    assert torch.allclose(together.raw, one_by_one, atol=1e-4)
    assert not torch.allclose(swapped.raw, one_by_one, atol=1e-2)  # the check sees another clip order


def test_targets_carry_each_objects_drawn_attributes():
    clips = make_targets(8, "pretrain", 0, 4)
    colours = dict(ATTRIBUTES)["colour"]
    for clip in clips:
        assert clip.attrs.shape == (len(clip.masks), len(ATTRIBUTES))
        for mask, attrs in zip(clip.masks, clip.attrs):
            pixels = clip.frames[0].permute(1, 2, 0)[mask[0]]  # the frame's pixels under the object's mask
            assert (pixels == torch.tensor(COLOURS[colours[attrs[0]]], dtype=torch.uint8)).all()
        assert len(set(clip.attrs[:, 0].tolist())) == len(clip.masks)  # one colour an object: it names the object


def test_what_prompts_sum_the_rows_of_the_named_attributes():
    torch.manual_seed(0)
    semantic = SemanticPrompts(width=8, tokens=2)
    attrs = torch.tensor([[2, 1, 0]])
    want = (semantic.tables[0].weight[2] + semantic.tables[2].weight[0]).view(1, 2, 8)
    assert torch.allclose(semantic(attrs, torch.tensor([[True, False, True]])), want)
    assert not torch.allclose(semantic(attrs, torch.tensor([[True, True, True]])), want)  # kind named too
    clips = make_targets(2, "pretrain", 0, 1)
    with pytest.raises(ValueError, match="semantic"):
        decode_targets(MaskDecoder("micro", 128), clips[:1], ["what"] * len(clips[0].masks), np.random.default_rng(0))


def test_prompt_kinds_without_what_prompts_draw_as_the_points_and_boxes_build():
    rng = np.random.default_rng(3)
    before = ["box" if rng.random() < 0.5 else "point" for _ in range(50)]  # the draws of the build before --what-share
    assert prompt_kinds(50, SamSettings(), np.random.default_rng(3)) == before
    kinds = prompt_kinds(2000, SamSettings(what_share=0.5), np.random.default_rng(3))
    assert abs(kinds.count("what") / 2000 - 0.5) < 0.05 and abs(kinds.count("box") / 2000 - 0.25) < 0.05


def test_option_lookup_answers_name_the_asked_option():
    for i in range(20):
        s = lookup_sample(i, "pretrain", 0)
        question, answer = s.turns[0].text, s.turns[1].text
        asked = re.search(r"Which option is (\w+)\?", question).group(1)
        options = dict(re.findall(r"\(([A-D])\) (\w+)", question))
        assert options[answer] == asked and answer in LETTERS and s.answer == answer
        s.validate()
