"""Source text shared by the test scripts that run a real DeepSpeed engine in a subprocess (CPU accelerator, gloo)."""

from __future__ import annotations

# What Lightning's DeepSpeed strategy hands the engine: its wrapper holds the LightningModule as `_forward_module`,
# here a frozen "backbone" and a trainable "l2m", so checkpoints show which parameters a ZeRO folder keeps.
WRAPPER = """
class Wrapper(torch.nn.Module):  # Lightning's wrapper holds the LightningModule as `_forward_module`
    def __init__(self):
        super().__init__()
        self._forward_module = torch.nn.Module()
        self._forward_module.model = torch.nn.Module()
        self._forward_module.model.backbone = torch.nn.Linear(3, 3).requires_grad_(False)
        self._forward_module.model.l2m = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self._forward_module.model.l2m(self._forward_module.model.backbone(x))
"""

# `import deepspeed` for these scripts. On the CPU accelerator DeepSpeed's torch backend JIT-compiles a shared-memory
# all-reduce op (g++, cached under ~/.cache/torch_extensions) at init_distributed: 40-70 s on a fresh CI machine, the
# slowest part of these tests. They check checkpoint files, not collectives: gloo's own collectives serve.
IMPORT_DEEPSPEED = """
import deepspeed
import importlib
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch itself)
"""
