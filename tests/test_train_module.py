"""Stage modules on the tiny UniPixel: what trains, optimizer groups, init_from across stages, answer scoring."""

import pytest
import torch
from omegaconf import OmegaConf

from pixelqa.config import load_recipe
from pixelqa.metrics.answers import TaskAccuracy, answer_exact_match
from pixelqa.train.module import (
    Stage1Module,
    Stage2Module,
    Stage3Module,
    check_init_stage,
    load_init_weights,
)


def _cfg(stage: int, *extra: str):
    cfg = load_recipe(
        [f"recipe=stage{stage}", "optim.lr=2e-5", "optim.decoder_lr=5e-6", "optim.extra_trainable=[]", *extra]
    )
    return OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optim, resolve=True)


@pytest.fixture(scope="module")
def stage3():
    torch.set_num_threads(1)
    model, optim = _cfg(3)
    return Stage3Module(model, optim, total_steps=10)


def _trainable_ids(module):
    return {id(p) for p in module.model.parameters() if p.requires_grad}


@pytest.mark.parametrize("cls", [Stage1Module, Stage2Module, Stage3Module])
def test_each_stage_trains_exactly_its_groups(stage3, cls):
    stage3.trainable = cls.trainable  # same network, another stage's choice
    try:
        stage3.configure_trainable()
        groups = stage3.model.parameter_groups()
        expected = {id(p) for name in cls.trainable for p in groups[name]}
        assert _trainable_ids(stage3) == expected
        base = [p for n, p in stage3.model.backbone.named_parameters() if "lora_" not in n]
        assert base and not any(p.requires_grad for p in base)  # the Qwen base weights never train
    finally:
        stage3.trainable = Stage3Module.trainable
        stage3.configure_trainable()
    assert {"backbone_lora", "mask_decoder", "m2l"} <= set(Stage3Module.trainable)
    assert Stage1Module.trainable == ("sparse_prompt_encoder",)


# Independent truth: the official code's `--tuning_modules` flags (substring match on parameter names) and the flags
# of each stage's script (official-code notes §1.10; "In stages 1-2 the embedding rows are frozen", §1.2).
RELEASE_FLAGS = {
    "embedding": ("embed_tokens", "lm_head"),
    "ref": ("ref_proj_single", "ref_proj_double", "ref_proj", "tem_emb", "tem_proj"),
    "ref_enc": ("ref_encoder",),
    "msk": ("msk_proj",),
    "seg": ("seg_head",),
    "sam2": ("sam2",),
}
RELEASE_STAGES = {
    1: ("ref",),
    2: ("seg",),
    3: ("embedding", "ref", "ref_enc", "msk", "seg", "sam2", "lora"),
}
# our module prefixes -> the release's parameter names; our new-token rows are rows of embed_tokens / lm_head there
OUR_TO_RELEASE = {
    "sparse_prompt_encoder.": "",
    "l2m.mlp.": "seg_head.",
    "m2l.mlp.": "msk_proj.",
    "mask_decoder.sam.": "sam2.",
    "new_token_embed": "embed_tokens.new_rows",
    "new_token_head": "lm_head.new_rows",
}


def _release_name(name: str) -> str:
    for ours, theirs in OUR_TO_RELEASE.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def _released_trainable(names: list[str], stage: int) -> set[str]:
    """The names the release's flags of `stage` unfreeze."""
    flags = RELEASE_STAGES[stage]
    out = set()
    for name in names:
        theirs = _release_name(name)
        if "lora" in flags and "lora_" in theirs:
            out.add(name)
        elif any(sub in theirs for f in flags if f != "lora" for sub in RELEASE_FLAGS[f]):
            out.add(name)
    return out


@pytest.mark.parametrize("cls", [Stage1Module, Stage2Module, Stage3Module])
def test_each_stage_trains_the_parameters_the_release_trains(stage3, cls):
    # stage 3 as the paper-scale recipe runs it (the demo scale drops the extra groups); the demo's
    # extra_trainable (LM head) is off in this fixture
    extra = ["embeddings", "mask_decoder_image_encoder"] if cls is Stage3Module else []
    before = stage3.optim_cfg["extra_groups"]
    stage3.trainable, stage3.optim_cfg["extra_groups"] = cls.trainable, extra
    try:
        stage3.configure_trainable()
        names = [n for n, _ in stage3.model.named_parameters()]
        trained = {n for n, p in stage3.model.named_parameters() if p.requires_grad}
        assert trained == _released_trainable(names, cls.stage)
        assert trained  # and something trains
    finally:
        stage3.trainable, stage3.optim_cfg["extra_groups"] = Stage3Module.trainable, before
        stage3.configure_trainable()
    # re-configuring without SAM's image encoder freezes it again (the groups do not remember an earlier call)
    assert not any(p.requires_grad for p in stage3.model.mask_decoder.sam.image_encoder.parameters())
    if cls is Stage1Module:  # the SAM prompt-encoder copy waits for stage 3; the projections train
        assert not any("ref_encoder" in n for n in trained) and any("tem_proj" in n for n in trained)
    if cls is Stage2Module:
        assert all(n.startswith("l2m.") for n in trained)


def test_stage3_optimizer_groups_use_decoder_lr(stage3):
    opt = stage3.configure_optimizers()["optimizer"]
    by_name = {g["name"]: g for g in opt.param_groups}
    decoder = {id(p) for p in stage3.model.parameter_groups()["mask_decoder"]}
    assert {id(p) for p in by_name["mask_decoder"]["params"]} == decoder
    assert not decoder & {id(p) for p in by_name["main"]["params"]}
    # the scheduler's first warm-up step already scaled the base lrs: 1 / ceil(0.03 x 10) of 2e-5 and 5e-6
    assert by_name["main"]["initial_lr"] == pytest.approx(2e-5)
    assert by_name["mask_decoder"]["initial_lr"] == pytest.approx(5e-6)
    n_main = sum(p.numel() for p in by_name["main"]["params"])
    assert n_main == sum(p.numel() for p in stage3.model.parameters() if p.requires_grad) - sum(
        p.numel() for p in stage3.model.parameter_groups()["mask_decoder"]
    )


def test_extra_trainable_parameters_join_the_main_group(stage3):
    stage3.optim_cfg["extra_trainable"] = ["lm_head"]
    try:
        stage3.configure_trainable()
        head = [p for n, p in stage3.model.named_parameters() if "lm_head" in n]
        assert head and all(p.requires_grad for p in head)
        main = next(g for g in stage3.optimizer_groups() if g["name"] == "main")
        assert {id(p) for p in head} <= {id(p) for p in main["params"]}
        ckpt = {"state_dict": stage3.state_dict()}
        stage3.on_save_checkpoint(ckpt)  # a trained base weight is kept in checkpoints
        assert any("lm_head" in k for k in ckpt["state_dict"])
        stage3.optim_cfg["extra_trainable"] = ["no_such_module"]
        with pytest.raises(ValueError, match=r"optim.extra_trainable: \['no_such_module'\] match no parameter"):
            stage3.configure_trainable()
    finally:
        stage3.optim_cfg["extra_trainable"] = []
        stage3.configure_trainable()


def test_backbone_lr_moves_the_backbones_trainable_weights_into_their_own_group(stage3):
    stage3.optim_cfg.update(extra_trainable=["lm_head"], backbone_lr=3e-6)
    try:
        stage3.configure_trainable()
        by_name = {g["name"]: g for g in stage3.optimizer_groups()}
        assert [g["name"] for g in stage3.optimizer_groups()] == ["main", "backbone", "mask_decoder"]
        groups = stage3.model.parameter_groups()
        head = [p for n, p in stage3.model.named_parameters() if "lm_head" in n]
        backbone = {id(p) for p in groups["backbone_lora"] + head}  # LoRA and a trained base weight, nothing else
        assert {id(p) for p in by_name["backbone"]["params"]} == backbone and by_name["backbone"]["lr"] == 3e-6
        new_modules = {id(p) for name in ("m2l", "l2m", "sparse_prompt_encoder") for p in groups[name]}
        assert new_modules <= {id(p) for p in by_name["main"]["params"]} and by_name["main"]["lr"] == 2e-5
        assert not backbone & {id(p) for p in by_name["main"]["params"] + by_name["mask_decoder"]["params"]}
    finally:
        stage3.optim_cfg.update(extra_trainable=[], backbone_lr=None)
        stage3.configure_trainable()
    assert [g["name"] for g in stage3.optimizer_groups()] == ["main", "mask_decoder"]  # unset: as released


def test_init_from_checks_the_stage():
    check_init_stage({"pixelqa_stage": 2}, 3, "x.ckpt")
    with pytest.raises(ValueError, match="checkpoint of stage 1, but this is stage 3"):
        check_init_stage({"pixelqa_stage": 1}, 3, "x.ckpt")
    with pytest.raises(ValueError, match="records no stage"):
        check_init_stage({"state_dict": {}}, 2, "x.ckpt")
    with pytest.raises(ValueError, match=r"stage 2, but this is stage 1; expected a stage-1 checkpoint, or no init"):
        check_init_stage({"pixelqa_stage": 2}, 1, "x.ckpt")  # there is no stage 0


def test_stage2_weights_move_into_a_lora_stage3(stage3):
    model, optim = _cfg(2)
    s2 = Stage2Module(model, optim, total_steps=10)
    with torch.no_grad():
        for p in s2.model.l2m.parameters():
            p.add_(1.0)  # something a fresh stage-3 model cannot have
    ckpt = {"state_dict": s2.state_dict(), "pixelqa_stage": 2}
    s2.on_save_checkpoint(ckpt)  # as Lightning does: drops the frozen base backbone
    assert not any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    report = load_init_weights(stage3, ckpt, "s2.ckpt")
    for a, b in zip(s2.model.l2m.parameters(), stage3.model.l2m.parameters()):
        assert torch.equal(a, b)
    assert report["missing"] and all("lora_" in k or k.startswith("model.backbone.") for k in report["missing"])


def test_init_weights_are_scanned_for_nan_once_when_the_caller_has_checked_them(stage3, monkeypatch):
    from pixelqa.train import module as module_mod

    s2 = Stage2Module(*_cfg(2), total_steps=10)
    ckpt = {"state_dict": s2.state_dict(), "pixelqa_stage": 2}
    s2.on_save_checkpoint(ckpt)
    scans: list[str] = []
    monkeypatch.setattr(module_mod, "check_finite_weights", lambda state, what: scans.append(what))
    load_init_weights(stage3, ckpt, "s2.ckpt")
    assert scans == ["init_from=s2.ckpt"]  # on its own it checks (the API's callers)
    load_init_weights(stage3, ckpt, "s2.ckpt", finite_checked=True)
    assert scans == ["init_from=s2.ckpt"]  # fit checked already (check_init_from): no second pass over the weights


def test_trained_base_weights_survive_loading_saving_and_a_stage_that_freezes_them(tmp_path):
    from pixelqa.model.unipixel import UniPixel
    from pixelqa.train.module import model_from_checkpoint

    model_cfg, optim = _cfg(3, "optim.extra_trainable=[lm_head]")
    trained = Stage3Module(model_cfg, optim, total_steps=10)
    head = next(p for n, p in trained.model.backbone.named_parameters() if "lm_head" in n)
    with torch.no_grad():
        head.add_(0.5)  # what a fresh build of the base cannot have
    ckpt = {"state_dict": trained.state_dict(), "pixelqa_stage": 3}
    trained.on_save_checkpoint(ckpt)
    # loaded for inference (no optimizer, nothing trainable beyond the stage's groups), then saved and loaded again
    loaded = model_from_checkpoint(model_cfg, ckpt, "s3.ckpt", stage=3)
    loaded.save_pretrained(tmp_path / "saved")
    again = UniPixel.from_pretrained(tmp_path / "saved")
    for model in (loaded, again):
        assert torch.equal(next(p for n, p in model.backbone.named_parameters() if "lm_head" in n), head)
    # a later stage that no longer trains it still writes it to its checkpoints
    later = Stage3Module(*_cfg(3), total_steps=10)
    load_init_weights(later, ckpt, "s3.ckpt")
    out = {"state_dict": later.state_dict()}
    later.on_save_checkpoint(out)
    key = next(k for k in out["state_dict"] if "lm_head" in k)
    assert torch.equal(out["state_dict"][key], head)
    # the fresh build differs (else this test could not fail)
    fresh = Stage3Module(*_cfg(3), total_steps=10)
    assert not torch.equal(next(p for n, p in fresh.model.backbone.named_parameters() if "lm_head" in n), head)
    assert not any("lm_head" in k for k in fresh.model.trainable_state_dict())


def test_answer_exact_match_by_hand():
    # vocab 3, L 4; position i's logits predict token i+1
    logits = torch.full((2, 4, 3), -1.0)
    logits[0, 1, 2] = logits[0, 2, 0] = 1.0  # predicts 2 then 0
    logits[1, 1, 2] = logits[1, 2, 1] = 1.0  # predicts 2 then 1
    labels = torch.tensor([[-100, -100, 2, 0], [-100, -100, 2, 0]])
    correct, scored = answer_exact_match(logits, labels)
    assert correct.tolist() == [True, False] and scored.tolist() == [True, True]
    acc = TaskAccuracy()
    acc.update(correct, ["mcq", "region_qa"])
    acc.update(torch.tensor([True]), ["res"])
    out = {k: float(v) for k, v in acc.compute().items()}
    assert out == {"mcq": 1.0, "region_qa": 0.0, "res": 1.0, "qa": 0.5}  # res is not a QA task
