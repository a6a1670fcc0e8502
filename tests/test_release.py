"""Released UniPixel checkpoints: parity with the official forward, failure on perturbed weights, bad folders.

The truth is shared/data/unipixel-official-tiny: a tiny random-weight checkpoint saved in the released format by
the official code, with the official forward's inputs and outputs on four cases.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from pixelqa import parity
from pixelqa.model import release
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.unipixel import UniPixel

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny"
CHECKPOINT = FIXTURE / "checkpoint"
CASES = FIXTURE / "cases"
pytestmark = pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="shared released-format fixture not present")


@lru_cache(maxsize=1)
def released_model() -> UniPixel:
    """The fixture loaded through the user-facing key (model=unipixel-3b model.path=DIR)."""
    return UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(CHECKPOINT))).eval()


def test_release_loads_with_its_tokens_and_config():
    model = released_model()
    assert model.token_ids == {"<|ref|>": 151665, "<|seg|>": 151666, "<|mem|>": 151667}
    assert (model.cfg.mask_decoder.arch, model.cfg.mask_decoder.image_size, model.cfg.hidden_tokens) == (
        "micro",
        128,
        2,
    )
    qwen = model.qwen
    # read from the JSON dict: mRoPE section, vision window and tied head survive (from_pretrained loses them)
    assert qwen.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert qwen.config.vision_config.window_size == 56
    assert qwen.lm_head.weight is qwen.get_input_embeddings().weight
    # our new-token rows start as the release's rows
    torch.testing.assert_close(model.new_token_embed, qwen.get_input_embeddings().weight[model.new_ids].float())


def test_parity_with_the_official_forward_on_every_case():
    reports = parity.run_parity(released_model(), CASES)
    assert [r.name for r in reports] == ["generate", "image", "prompts", "video"]
    for r in reports:
        assert not r.failures, r.line()
    forward = {r.name: r.values for r in reports}
    assert forward["prompts"]["mask_pixels"] == 0 and forward["prompts"]["logits"] <= parity.LOGIT_TOL
    assert reports[0].values["generated_equal"] is True


@pytest.mark.parametrize(
    ("param", "fails"),
    [
        ("backbone.model.language_model.layers.1.mlp.down_proj.weight", "logits"),
        ("l2m.mlp.1.weight", "seg_prompts"),  # seg_head
        ("mask_decoder.sam.sam_mask_decoder.output_upscaling.0.weight", "mask_logits"),  # SAM decoder
        ("sparse_prompt_encoder.ref_proj.1.weight", "logits"),  # <|ref|> encoder: only the prompts case uses it
        ("m2l.mlp.0.weight", "logits"),  # msk_proj: only the memory case uses it
    ],
)
def test_parity_fails_when_a_weight_is_perturbed(param, fails):
    model = released_model()
    weight = dict(model.named_parameters())[param]
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-2 * torch.randn_like(weight))
        reports = parity.run_parity(model, CASES, ["prompts"])
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert fails in reports[0].failures, reports[0].line()


def test_parity_cli_prints_ok_and_exits_0(capsys):
    assert parity.main([str(CHECKPOINT), str(CASES), "--case", "image"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "parity: ok"


def _copy(tmp_path: Path, name: str = "ckpt") -> Path:
    """A writable copy of the fixture checkpoint (weights linked)."""
    from model_fixtures import released_copy

    return released_copy(tmp_path, name)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _build(folder: Path) -> UniPixel:
    return UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(folder)))


def test_unknown_model_type_names_file_and_key(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, model_type="llava")
    with pytest.raises(release.ReleaseError, match=r"config.json: model_type='llava'"):
        _build(folder)


def test_token_ids_that_do_not_match_are_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, seg_token_id=151667)
    with pytest.raises(release.ReleaseError, match=r"config.json: seg_token_id=151667 but the folder's tokenizer"):
        _build(folder)


def test_missing_shard_and_missing_index_entry_name_the_file(tmp_path):
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    names = json.loads((FIXTURE / "manifest.json").read_text())["layout"]["tensors"]
    index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(release.ReleaseError, match=r"index.json: shard 'model-00001-of-00002.safetensors'"):
        _build(folder)
    # a shard that exists but an index that forgets a tensor
    index = {"weight_map": {k: "model.safetensors" for k in names if k != "model.norm.weight"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").symlink_to(CHECKPOINT / "model.safetensors")
    with pytest.raises(release.ReleaseError, match=r"no entry for 'model.language_model.norm.weight'"):
        _build(folder)


def test_shape_mismatch_names_the_tensor(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, sam2_hidden_tokens=4)  # seg_head would output 4 x 256, the weights hold 2 x 256
    with pytest.raises(release.ReleaseError, match=r"'seg_head.3.(weight|bias)' has shape \(512"):
        _build(folder)


def test_parity_cli_refuses_a_base_model_and_missing_folders(tmp_path, capsys):
    folder = _copy(tmp_path)
    _edit_config(folder, model_type="qwen2_5_vl")
    assert parity.main([str(folder), str(CASES)]) == 2
    assert "parity needs a released UniPixel folder" in capsys.readouterr().err
    assert parity.main([str(tmp_path / "nowhere"), str(CASES)]) == 2
    assert capsys.readouterr().err.startswith("error: model_dir: ")
    # a truncated download: one line naming the file, from parity and from the model build alike
    (tmp_path / "cut").mkdir()
    cut = _copy(tmp_path / "cut")
    data = (CHECKPOINT / "model.safetensors").read_bytes()
    (cut / "model.safetensors").unlink()  # a link to the shared fixture: never written through
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert parity.main([str(cut), str(CASES)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: not a readable safetensors file" in err and len(err.strip().splitlines()) == 1


def test_export_round_trip_is_exact_on_the_release(tmp_path):
    from safetensors.torch import load_file

    from pixelqa import export

    out = export.export(released_model(), tmp_path / "exported", "bfloat16")
    theirs, ours = load_file(CHECKPOINT / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(theirs) == sorted(ours)  # the release's names, tied head omitted
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "pixel_qwen2_5_vl" and "tie_word_embeddings" not in saved
    reports = parity.run_parity(_build(out).eval(), CASES, ["prompts"])
    assert not reports[0].failures, reports[0].line()


def test_export_of_a_trained_tiny_model_reads_back_identically(tmp_path):
    from model_fixtures import cached_model, training_batch

    from pixelqa import export

    model = cached_model()
    with torch.no_grad():
        model.new_token_head.add_(0.5)  # trained rows that differ from the tied/untied base rows
    try:
        out = export.export(model, tmp_path / "tiny")
        umask = os.umask(0)
        os.umask(umask)
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a plain folder's mode (mkdtemp's own is 0700)
        assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary folder left beside it
        back = _build(out).eval()
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
        # mask_draws counts training steps (a training-state buffer, not part of a released model)
        ours = {k: v for k, v in model.state_dict().items() if k != "mask_draws"}
        theirs = {k: v for k, v in back.state_dict().items() if k != "mask_draws"}
        assert sorted(ours) == sorted(theirs)
        rows = torch.ones(model.qwen.config.text_config.vocab_size, dtype=torch.bool)
        rows[model.new_ids] = False  # the base rows of the three tokens are unused (our new-token rows replace them)
        for k in ours:
            a, b = ours[k].float(), theirs[k].float()
            if k.endswith(("lm_head.weight", "embed_tokens.weight")):
                a, b = a[rows], b[rows]
            assert torch.equal(a, b), k
        batch = training_batch(model.processor)
        with torch.no_grad():
            torch.testing.assert_close(back.eval()(batch).logits, model.eval()(batch).logits, atol=0, rtol=0)
    finally:
        with torch.no_grad():
            model.new_token_head.sub_(0.5)


def test_export_cli_user_errors_exit_2(tmp_path, capsys):
    from pixelqa import export

    assert export.main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    # OUT holding anything else (a user's files, the base weights) is refused before any model loads; a file too
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (tmp_path / "image.jpg").write_bytes(b"jpeg")
    for out, said in ((mine, "is a folder that is not empty"), (tmp_path / "image.jpg", "is not a folder")):
        assert export.main([str(CHECKPOINT), str(out)]) == 2
        err = capsys.readouterr().err
        assert said in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert (mine / "thesis.txt").read_text() == "years of work" and (tmp_path / "image.jpg").read_bytes() == b"jpeg"
    assert export.main([str(CHECKPOINT), str(tmp_path / "image.jpg"), "--overwrite"]) == 2  # never over a file
    assert "is not a folder" in capsys.readouterr().err
    # a checkpoint that needs full unpickling is refused with export's own option named
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "thing": argparse.Namespace(code="runs at load")}, evil)
    assert export.main([str(evil), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "trust_checkpoint=true" not in err and err.startswith("error: ckpt:")


def test_save_pretrained_replaces_only_an_earlier_save(tmp_path):
    from model_fixtures import cached_model

    from pixelqa.files import atomic_folder

    model = cached_model()
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files other than a saved UniPixel's"):
        model.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    model.save_pretrained(folder)  # empty: written
    model.save_pretrained(folder)  # an earlier save: replaced
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"), atomic_folder(tmp_path / "file"):
        pass
    assert (tmp_path / "file").read_text() == "x"


def _base_folder(tmp_path: Path) -> Path:
    """A plain Qwen2.5-VL folder (model_type qwen2_5_vl, Qwen tensors only) made from the fixture."""
    from safetensors.torch import load_file, save_file

    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    tensors = load_file(CHECKPOINT / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k.startswith(("model.", "visual."))}, folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    unipixel_keys = {"ref_token_id", "seg_token_id", "mem_token_id", "sample_objects", "base_model"}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("sam2_") and k not in unipixel_keys}
    cfg["model_type"] = "qwen2_5_vl"
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_base_qwen_folder_starts_the_new_modules_as_the_release_trains_them(tmp_path):
    from pixelqa.model.config import MaskDecoderConfig

    folder = _base_folder(tmp_path)
    cfg = UniPixelConfig(preset="unipixel-3b", path=str(folder), mask_decoder=MaskDecoderConfig(arch="micro"))
    model = UniPixel(cfg)
    assert model.source.kind == "base"
    assert model.token_ids == {"<|ref|>": 151665, "<|seg|>": 151666, "<|mem|>": 151667}  # the released ids
    # the Qwen weights are the release's, the UniPixel modules start fresh: M->L = the merger MLP, the <|ref|>
    # encoder's SAM part = SAM's prompt encoder (parameters; its Fourier buffer is its own), projections xavier
    torch.testing.assert_close(model.m2l.mlp[0].weight, model.qwen.model.visual.merger.mlp[0].weight.float())
    sam = dict(model.mask_decoder.sam.sam_prompt_encoder.named_parameters())
    for name, p in model.sparse_prompt_encoder.ref_encoder.named_parameters():
        torch.testing.assert_close(p, sam[name])
    assert float(model.l2m.mlp[1].bias.abs().sum()) == 0.0
    released = released_model()
    torch.testing.assert_close(
        model.qwen.get_input_embeddings().weight, released.qwen.get_input_embeddings().weight, atol=0, rtol=0
    )


def test_export_of_a_lightning_checkpoint_merges_lora(tmp_path):
    from dataclasses import asdict

    from model_fixtures import tiny_config, training_batch

    from pixelqa import export
    from pixelqa.model.config import LoraConfig
    from pixelqa.train.module import Stage3Module

    cfg = tiny_config(lora=LoraConfig(enabled=True, rank=4, alpha=8, dropout=0.0))
    module = Stage3Module(model=asdict(cfg), optim={"lr": 1e-3, "decoder_lr": 1e-3}, total_steps=1)
    with torch.no_grad():  # trained-looking adapters: B is zero at init, which would make the merge trivial
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ours = {f"model.{k}": v for k, v in module.model.trainable_state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": ours, "hyper_parameters": dict(module.hparams), "pixelqa_stage": 3}, ckpt)
    assert export.main([str(ckpt), str(tmp_path / "out")]) == 0
    back = _build(tmp_path / "out").eval()
    batch = training_batch(module.model.processor)
    with torch.no_grad():
        torch.testing.assert_close(back(batch).logits, module.model.eval()(batch).logits, atol=2e-5, rtol=1e-5)


def test_media_of_any_size_enter_a_released_model():
    from model_fixtures import frames

    model = released_model()
    res = model.chat(frames(3, 96, 130, seed=1), "Please segment the red box in this video.", max_new_tokens=2)
    assert isinstance(res.text, str) and res.state.kind == "video"  # 96 x 130 is no multiple of 28: resized


def test_stages_1_and_2_refuse_a_release_and_fit_names_a_foreign_folder(tmp_path, capsys):
    from pixelqa import fit

    for stage in ("stage1", "stage2"):
        with pytest.raises(SystemExit) as exit_info:
            fit.main([f"recipe={stage}", "model=unipixel-3b", f"model.path={CHECKPOINT}", f"output_dir={tmp_path}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "is a released UniPixel" in err and "recipe=stage3" in err and "config.json" in err
    folder = _copy(tmp_path)
    _edit_config(folder, model_type="llava")
    with pytest.raises(SystemExit):
        fit.main(["recipe=stage3", "model=unipixel-3b", f"model.path={folder}", f"output_dir={tmp_path}"])
    assert "model_type='llava'" in capsys.readouterr().err


def test_a_sharded_release_loads_and_keeps_parity(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    tensors = load_file(CHECKPOINT / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    index = {"metadata": {}, "weight_map": {}}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
        index["weight_map"].update({k: shard for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    model = _build(folder).eval()
    reports = parity.run_parity(model, CASES, ["prompts"])
    assert not reports[0].failures, reports[0].line()


def test_the_demo_scale_fine_tunes_a_release_with_a_tied_head():
    from omegaconf import OmegaConf

    from pixelqa.config import load_recipe, to_object
    from pixelqa.fit import banner
    from pixelqa.train.module import Stage3Module

    cfg = load_recipe(["recipe=stage3", "model=unipixel-3b", f"model.path={CHECKPOINT}"])
    assert "lm_head" in cfg.optim.extra_trainable  # the demo scale trains the LM head ...
    assert "EMBEDDED DEMO" not in banner(to_object(cfg))  # ... but this is the user's model, not the demo's
    module = Stage3Module(
        OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optim, resolve=True), 10
    )
    qwen = module.model.qwen
    assert qwen.lm_head.weight is qwen.get_input_embeddings().weight  # tied, as the 3B release
    assert qwen.lm_head.weight.requires_grad  # the tied matrix is the head that trains


def test_a_release_says_which_settings_it_overrides_and_records_the_values_used(tmp_path, capsys):
    from mlflow import MlflowClient

    from pixelqa import fit

    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["recipe=stage3", "model=unipixel-3b", f"model.path={CHECKPOINT}", f"data.shards={tmp_path / 'shards'}"]
    args += ["data.synthetic_train=8", "data.synthetic_val=4", "data.val_samples=2", "data.batch_size=2"]
    args += ["trainer.max_steps=1", "trainer.enable_progress_bar=false", "eval.after_fit=false"]
    args += [f"tracking.tracking_uri={db}", f"tracking.artifact_location={tmp_path / 'art'}"]
    args += [f"output_dir={tmp_path / 'run'}", "tracking.log_overlays=false"]
    fit.run([*args, "model.mask_decoder.mode=independent", "model.hidden_tokens=4", "model.seg_head=token"])
    out, err = capsys.readouterr()
    (line,) = [x for x in err.splitlines() if "is a released UniPixel, which fixes" in x]
    assert "model.hidden_tokens: 4 -> 2" in line and "model.mask_decoder.mode: 'independent' -> 'propagate'" in line
    assert "model.seg_head: 'token' -> 'released'" in line
    assert out.index("PixelQA fit:") < out.index("parameters:")  # said before the model is built and trained
    recipe = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "hidden_tokens: 2" in recipe and "mode: propagate" in recipe and "seg_head: released" in recipe
    client = MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name("pixelqa").experiment_id])
    params = run.data.params
    assert params["model.hidden_tokens"] == "2" and params["model.mask_decoder.mode"] == "propagate"
    assert params["model.seg_head"] == "released"
