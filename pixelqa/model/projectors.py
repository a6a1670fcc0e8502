"""M->L (pooled visual features -> LLM token) and L->M (<|seg|> hidden state -> SAM prompt tokens) projectors."""

from __future__ import annotations

import torch
from torch import nn


class MaskToLanguage(nn.Module):
    """M->L: pooled pre-merger visual features (4 * vit width) -> LLM width; Linear -> GELU -> Linear.

    Same shapes as Qwen2.5-VL's V->L merger MLP, so it starts from the merger's weights.
    """

    def __init__(self, in_dim: int, llm_width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, llm_width))

    @torch.no_grad()
    def init_from_merger(self, merger_mlp: nn.Sequential) -> bool:
        """Copy Qwen's merger MLP weights where the shapes match; True if everything was copied."""
        copied = True
        for ours, theirs in ((self.mlp[0], merger_mlp[0]), (self.mlp[2], merger_mlp[2])):
            if ours.weight.shape == theirs.weight.shape:
                ours.weight.copy_(theirs.weight.float())
                ours.bias.copy_(theirs.bias.float())
            else:
                copied = False
        return copied

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, llm_width)."""
        return self.mlp(pooled)


class LanguageToMask(nn.Module):
    """L->M: a <|seg|> hidden state (LLM width) -> `num_tokens` SAM prompt tokens of `sam_width`.

    norm=True is the released `seg_head`: Qwen's RMSNorm first (it reads the pre-final-norm residual stream), then
    Linear -> GELU -> Linear; norm=False is the paper's Linear -> GELU -> Linear.
    """

    def __init__(self, llm_width: int, num_tokens: int = 2, sam_width: int = 256, norm: bool = True, eps: float = 1e-6):
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

        if num_tokens < 1:
            raise ValueError(f"hidden_tokens: got {num_tokens}, expected >= 1")
        self.num_tokens, self.sam_width = num_tokens, sam_width
        layers = [Qwen2_5_VLRMSNorm(llm_width, eps=eps)] if norm else []
        layers += [nn.Linear(llm_width, llm_width), nn.GELU(), nn.Linear(llm_width, num_tokens * sam_width)]
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def init_as_released(self) -> None:
        """xavier-uniform weights and zero biases on the Linear layers, as the release's training starts."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, llm_width) -> (N, num_tokens, sam_width)."""
        return self.mlp(hidden).view(hidden.shape[0], self.num_tokens, self.sam_width)
