"""A real DeepSpeed ZeRO-2 engine (CPU accelerator, gloo) writes a checkpoint directory as Lightning's DeepSpeed
strategy does (tag "checkpoint", frozen parameters excluded, Lightning's state as client state); `init_from` /
`ckpt=` read it back: the trained weights only, with the stage and step."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from deepspeed_scripts import IMPORT_DEEPSPEED, WRAPPER
from ports import free_port

from pixelqa.train.module import read_checkpoint
from pixelqa.train.strategies import build_strategy

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

net = Wrapper()
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
engine, *_ = deepspeed.initialize(model=net, model_parameters=[p for p in net.parameters() if p.requires_grad],
                                  config=config)
engine.save_checkpoint(sys.argv[1], tag="checkpoint", exclude_frozen_parameters=True,
                       client_state={"pixelqa_stage": 3, "global_step": 7, "pixelqa_stream": {"seed": 0}})
torch.save(net._forward_module.model.l2m.state_dict(), os.path.join(sys.argv[1], "truth.pt"))
"""
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_a_real_zero2_checkpoint_directory_reads_back(tmp_path):
    folder = tmp_path / "step000007.ckpt"
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(folder), str(free_port())], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ckpt = read_checkpoint(folder)
    assert ckpt["pixelqa_stage"] == 3 and ckpt["global_step"] == 7 and ckpt["pixelqa_stream"] == {"seed": 0}
    assert sorted(ckpt["state_dict"]) == ["model.l2m.bias", "model.l2m.weight"]  # the frozen backbone left out
    truth = torch.load(folder / "truth.pt")
    assert all(torch.equal(ckpt["state_dict"][f"model.l2m.{k}"].float(), v) for k, v in truth.items())


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_strategy_builds_with_the_micro_batch_and_zero2():
    from pixelqa.config import load_recipe, to_object

    strategy = build_strategy(to_object(load_recipe(["recipe=stage3", "trainer=deepspeed", "data.batch_size=2"])))
    assert strategy.config["train_micro_batch_size_per_gpu"] == 2
    assert strategy.config["zero_optimization"]["stage"] == 2 and strategy.exclude_frozen_parameters
