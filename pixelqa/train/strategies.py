"""The Lightning strategy of a recipe: plain names (auto, ddp) pass through; DeepSpeed and FSDP are built here.

- `trainer=deepspeed`: ZeRO stage 2 with bf16; the micro-batch size is given to DeepSpeed (`data.batch_size`, it
  cannot infer it from an iterable stream); checkpoints exclude frozen parameters (only the trained weights are
  written); the gradient accumulation is Lightning's, counted once (`pixelqa.train.normalise.loss_scale`).
  `ckpt=last` and `init_from=` accept its checkpoint directories (`pixelqa.train.guards.read_resume_metadata`,
  `pixelqa.train.module.read_checkpoint`). Its checkpoint folders, written by every rank, appear whole or not at
  all (`pixelqa.train.checkpoint_io.AtomicDeepSpeedStrategy`).
- `trainer=fsdp`: full sharding with one FSDP unit per Qwen decoder layer, ViT block and SAM block (Hiera blocks,
  two-way attention blocks); bf16 compute over fp32 storage (FSDP flattens a unit's parameters into one tensor of
  one dtype, so a bf16 frozen base and fp32 trainable LoRA / projector weights cannot share a unit: the whole
  model is stored in fp32 and FSDP's mixed precision casts to bf16 for compute, gradients reduced in fp32);
  `use_orig_params` so frozen and trainable parameters can share a unit. Full state dicts: rank 0 writes one
  checkpoint file, atomically (`pixelqa.train.checkpoint_io.AtomicCheckpointIO`).

`strategy_spec` returns plain data (testable on CPU without DeepSpeed); `build_strategy` instantiates it.
"""

from __future__ import annotations

from typing import Any

DEEPSPEED_NAMES = ("deepspeed", "deepspeed_stage_2", "deepspeed_stage_3")
FSDP_WRAPPED = (
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLDecoderLayer",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLVisionBlock",
    "sam2.modeling.backbones.hieradet.MultiScaleBlock",
    "sam2.modeling.sam.transformer.TwoWayAttentionBlock",
)


def strategy_spec(recipe: Any) -> tuple[str, dict[str, Any]]:
    """("name", {}) for a plain strategy, ("deepspeed" | "fsdp", constructor arguments) otherwise."""
    name = str(recipe.trainer.strategy)
    if name in DEEPSPEED_NAMES:
        stage = 3 if name.endswith("3") else 2
        return "deepspeed", {
            "stage": stage,
            "logging_batch_size_per_gpu": int(recipe.data.batch_size),
            "exclude_frozen_parameters": True,
        }
    if name == "fsdp":
        return "fsdp", {
            "auto_wrap_policy": set(FSDP_WRAPPED),
            "sharding_strategy": "FULL_SHARD",
            "use_orig_params": True,
            "mixed_precision": {"param_dtype": "bfloat16", "reduce_dtype": "float32", "buffer_dtype": "bfloat16"},
            "state_dict_type": "full",
        }
    return name, {}


def model_dtype_for(recipe: Any) -> str:
    """The storage dtype the model needs under the recipe's strategy (fp32 under FSDP, see the module doc)."""
    return "float32" if str(recipe.trainer.strategy) == "fsdp" else str(recipe.model.dtype)


def _import(path: str) -> type:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_strategy(recipe: Any) -> Any:
    """The `strategy` argument of lightning.Trainer for a recipe."""
    kind, kwargs = strategy_spec(recipe)
    if kind == "deepspeed":
        from pixelqa.train.checkpoint_io import AtomicDeepSpeedStrategy

        return AtomicDeepSpeedStrategy(**kwargs)
    if kind == "fsdp":
        import torch
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import MixedPrecision

        from pixelqa.train.checkpoint_io import AtomicCheckpointIO

        mp = MixedPrecision(**{k: getattr(torch, v) for k, v in kwargs["mixed_precision"].items()})
        policy = {_import(p) for p in kwargs["auto_wrap_policy"]}
        # full state dicts: rank 0 writes one file through the strategy's CheckpointIO (fit gives FSDP no plugins)
        io = AtomicCheckpointIO()
        return FSDPStrategy(**{**kwargs, "auto_wrap_policy": policy, "mixed_precision": mp, "checkpoint_io": io})
    return kind
