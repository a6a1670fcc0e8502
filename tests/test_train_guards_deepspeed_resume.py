"""Resuming from a DeepSpeed checkpoint folder (`ckpt=DIR`, or `ckpt=last` when last.ckpt is one) runs no code from
it: DeepSpeed's own loader unpickles every model- and optimizer-state file of the folder with weights_only=False,
so `read_resume_metadata` safe-loads every `*.pt` there first. A crafted optimizer-state file refuses the resume in
one line naming the file (exit status 2) unless trust_checkpoint=true; a genuine DeepSpeed checkpoint (its
LossScaler, ZeroStageEnum and fragment_address included) is accepted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed_scripts import IMPORT_DEEPSPEED, WRAPPER
from ports import free_port

from pixelqa import fit
from pixelqa.checkpoints import CheckpointError
from pixelqa.config import RecipeError, load_recipe, run_cli, to_object
from pixelqa.train.guards import read_resume_metadata

OPTIM = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")


class _RunsCode:
    """Pickles as a call to os.system: DeepSpeed's torch.load(weights_only=False) would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _ds_folder(folder: Path, optim_state: object, tag: str = "checkpoint") -> Path:
    """A checkpoint folder laid out as Lightning's DeepSpeed strategy writes it (`latest` naming the tag folder,
    rank 0's model states with Lightning's entries as client state, rank 0's optimizer states)."""
    (folder / tag).mkdir(parents=True)
    (folder / "latest").write_text(tag)
    torch.save(
        {
            "module": {"_forward_module.model.l2m.weight": torch.ones(2, 3)},
            "global_step": 7,
            "pixelqa_stage": 3,
            "pixelqa_stream": {"seed": 0},
            "hyper_parameters": {"stage": 3},
            "param_shapes": [{"_forward_module.model.l2m.weight": torch.Size([2, 3])}],
            "ds_config": {"zero_optimization": {"stage": 2}},
            "ds_version": "0.19.8",
        },
        folder / tag / "mp_rank_00_model_states.pt",
    )
    torch.save(optim_state, folder / tag / OPTIM)
    return folder


def _genuine_optim_state() -> dict:
    """The structure of a ZeRO-2 bf16 optimizer-state file, with the DeepSpeed classes it holds."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(1.0),
            "dynamic_loss_scale": False,
            "overflow": False,
            "clip_grad": 0.0,
            "base_optimizer_state": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(6)}}},
            "single_partition_of_fp32_groups": [torch.zeros(6)],
            "zero_stage": ZeroStageEnum.gradients,
            "group_paddings": [0],
            "partition_count": [1],
            "ds_version": "0.19.8",
            "param_slice_mappings": [{"_forward_module.model.l2m.weight": fragment_address(numel=6, start=0)}],
            "fp16_scaler": DynamicLossScaler(2.0**16, 1000, 1.0, 2, False),  # what trainer.precision=16-mixed saves
        },
        "ds_config": {"zero_optimization": {"stage": 2}},
        "ds_version": "0.19.8",
    }


@pytest.fixture()
def crafted(tmp_path) -> tuple[Path, Path]:
    """(a DeepSpeed checkpoint folder whose optimizer states carry a command, the file the command would create)."""
    marker = tmp_path / "ran"
    folder = _ds_folder(
        tmp_path / "run" / "checkpoints" / "step000007.ckpt", {"optimizer_state_dict": _RunsCode(marker)}
    )
    return folder, marker


def _recipe(*args: str):
    return to_object(load_recipe(["recipe=stage3", *args]))


def _check_resume(args: list[str]) -> None:
    """What `pixelqa.fit` does with ckpt= before training: resolve it, then check the resume."""
    recipe = _recipe(*args)
    fit.check_resume(recipe, fit.resolve_ckpt(recipe), {}, {})


def test_a_crafted_optimizer_state_file_refuses_the_resume_in_one_line(crafted, capsys):
    folder, marker = crafted
    optim = folder / "checkpoint" / OPTIM
    with pytest.raises(CheckpointError) as refused:
        read_resume_metadata(folder)
    said = str(refused.value)
    assert len(said.splitlines()) == 1 and str(optim) in said
    assert "system" in said  # the call it would make
    assert "refused" in said and "trust_checkpoint=true" in said
    assert not marker.exists()
    # through fit: ckpt=DIR and ckpt=last (last.ckpt a link to the folder) refuse it as a recipe error, exit 2
    (folder.parent / "last.ckpt").symlink_to(folder.name)
    for ckpt in (str(folder), "last"):
        args = [f"output_dir={folder.parent.parent}", f"ckpt={ckpt}"]
        recipe = _recipe(*args)
        with pytest.raises(RecipeError, match=r"optim_states\.pt.* needs unpickling .*refused"):
            fit.check_resume(recipe, fit.resolve_ckpt(recipe), {}, {})
        with pytest.raises(SystemExit) as exited:
            run_cli(_check_resume, None, args)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("recipe error: ckpt: ") and OPTIM in err
    assert not marker.exists()
    # trusted: the check passes (DeepSpeed then loads the files in full, as the user chose)
    assert read_resume_metadata(folder, trust=True)["global_step"] == 7


def test_every_pt_file_and_the_tag_latest_names_are_checked(tmp_path):
    marker = tmp_path / "ran"
    # the tag DeepSpeed reads from `latest` need not be "checkpoint": its files are the ones checked
    folder = _ds_folder(tmp_path / "tagged.ckpt", {"optimizer_state_dict": _RunsCode(marker)}, tag="global_step7")
    with pytest.raises(CheckpointError, match=r"global_step7/bf16_zero_pp_rank_0_mp_rank_00_optim_states\.pt"):
        read_resume_metadata(folder)
    # a crafted file of another rank, beside clean ones
    other = _ds_folder(tmp_path / "ranks.ckpt", {"optimizer_state_dict": {"state": {}}})
    torch.save(
        {"optimizer_state_dict": _RunsCode(marker)}, other / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_1_mp_rank_00_optim_states\.pt"):
        read_resume_metadata(other)
    # `latest` naming a folder outside the checkpoint (DeepSpeed joins it to the folder: `/x` or `../x` escape it)
    for tag in (str(folder / "global_step7"), "../tagged.ckpt/global_step7"):
        (other / "latest").write_text(tag)
        with pytest.raises(CheckpointError, match=r"latest' names the tag folder .* not a folder inside"):
            read_resume_metadata(other)
    assert not marker.exists()


@needs_deepspeed
def test_a_checkpoint_of_genuine_deepspeed_structure_is_accepted(tmp_path):
    folder = _ds_folder(tmp_path / "step000007.ckpt", _genuine_optim_state())
    saved = read_resume_metadata(folder)
    assert saved == {
        "global_step": 7,
        "pixelqa_stage": 3,
        "pixelqa_stream": {"seed": 0},
        "hyper_parameters": {"stage": 3},
    }


@needs_deepspeed
def test_getattr_is_allowed_only_to_read_a_deepspeed_enum_member(tmp_path):
    import pickle

    from deepspeed.runtime.zero.config import ZeroStageEnum

    class _Reads:  # pickles as getattr(ZeroStageEnum, "__init__"): not a member
        def __reduce__(self):
            return (getattr, (ZeroStageEnum, "__init__"))

    folder = _ds_folder(tmp_path / "step.ckpt", {"x": _Reads()})
    with pytest.raises(CheckpointError, match=r"optim_states\.pt.* refused"):
        read_resume_metadata(folder)
    assert pickle.loads(pickle.dumps(ZeroStageEnum.gradients)) is ZeroStageEnum.gradients


WRITER = (
    """
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
"""
    + IMPORT_DEEPSPEED
    + """
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)

"""
    + WRAPPER
    + """

net = Wrapper().to(torch.bfloat16)
optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
          "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=net, optimizer=optimizer, config=config)
engine.backward(engine(torch.randn(2, 3, dtype=torch.bfloat16)).float().sum())
engine.step()
engine.save_checkpoint(sys.argv[1], tag="checkpoint", exclude_frozen_parameters=True,
                       client_state={"pixelqa_stage": 3, "global_step": 7, "pixelqa_stream": {"seed": 0}})
"""
)


@pytest.mark.slow
@needs_deepspeed
def test_a_real_zero2_bf16_checkpoint_folder_is_accepted(tmp_path):
    folder = tmp_path / "step000007.ckpt"
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(folder), str(free_port())], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (folder / "checkpoint" / OPTIM).is_file()  # what is checked: the optimizer states too
    assert read_resume_metadata(folder) == {"pixelqa_stage": 3, "global_step": 7, "pixelqa_stream": {"seed": 0}}
