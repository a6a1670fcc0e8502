"""Greedy generation for UniPixel with a KV cache: our embeddings at prefill, cached single-token steps after.

The prefill runs the ViT once and fills the `<|ref|>` / `<|mem|>` / media positions (`UniPixel.embed`); each later
step embeds only the new token (our rows for the three special tokens) and reuses transformers' cache, with the mRoPE
position of the step given explicitly (text positions continue from the prompt's rope delta). The state that feeds
each generated `<|seg|>`'s mask is kept (released: the pre-final-norm state of the position before it; seg_head=token:
the post-norm state of the `<|seg|>` itself), so masks are decoded once per `<|seg|>`, without a second LLM pass.
`use_cache=False` runs the full forward at every step (the reference the cached path is tested against).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from pixelqa.batch import Batch
from pixelqa.model.unipixel import PreNormCatcher
from pixelqa.prompt_format import MEM, REF, SEG


@dataclass
class Generation:
    """What one greedy generation produced."""

    ids: list[int]  # new token ids (without the end-of-turn token)
    text: str
    batch: Batch  # the input batch with the new tokens appended
    seg_states: torch.Tensor  # (n_seg, D) the states that feed the generated <|seg|> masks, in order
    prompt_seg_states: torch.Tensor  # (n, D) the same for the <|seg|> tokens already in the prompt
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def append_tokens(batch: Batch, tokens: list[int]) -> Batch:
    """A copy of a one-sample batch with text tokens appended."""
    out = copy.copy(batch)
    extra = torch.tensor([tokens], dtype=batch.input_ids.dtype, device=batch.input_ids.device)
    out.input_ids = torch.cat([batch.input_ids, extra], 1)
    out.attention_mask = torch.cat([batch.attention_mask, torch.ones_like(extra)], 1)
    out.labels = torch.cat([batch.labels, torch.full_like(extra, -100)], 1)
    out.mm_token_type_ids = torch.cat([batch.mm_token_type_ids, torch.zeros_like(extra)], 1)
    return out


def _seg_state(model, pre: torch.Tensor, post: torch.Tensor, where: int) -> torch.Tensor:
    """The state feeding a <|seg|>; `where` indexes the position before it (released) in `pre` / `post`."""
    return pre[0, where] if model.cfg.seg_head == "released" else post[0, where]


@torch.no_grad()
def greedy_generate(
    model,
    batch: Batch,
    max_new_tokens: int,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    visual_cache: dict | None = None,
) -> Generation:
    """Greedy continuation of a one-sample batch; stops at the end-of-turn token; <|ref|>/<|mem|> never emitted.

    stop_at_eos=False bans the end-of-turn token instead (benchmarks that need an exact number of steps).
    """
    if batch.size != 1:
        raise ValueError(f"batch: got {batch.size} samples, expected 1 (generation runs one conversation)")
    tok = model.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    banned = [model.token_ids[REF], model.token_ids[MEM]]
    seg_id = model.token_ids[SEG]
    released = model.cfg.seg_head == "released"
    qwen_model = model.qwen.model
    emb, enc, _ = model.embed(batch, visual_cache)
    caches: list = []
    post, pre = model._run_llm(batch, emb, enc, cache=caches if use_cache else None)
    prompt_seg = (batch.input_ids[0] == seg_id).nonzero().flatten()
    where = prompt_seg - 1 if released else prompt_seg
    prompt_states = torch.stack([_seg_state(model, pre, post, int(w)) for w in where]) if len(where) else pre[0, :0]
    cache = caches[0] if use_cache else None
    deltas = qwen_model.rope_deltas
    length = int(batch.input_ids.shape[1])
    new: list[int] = []
    states: list[torch.Tensor] = []
    current = batch
    for _ in range(max_new_tokens):
        logits = model.logits(post[:, -1:])[0, -1].float()
        logits[banned] = float("-inf")
        if not stop_at_eos:
            logits[eos] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == eos:
            break
        if nxt == seg_id and released:
            states.append(pre[0, -1])  # the position whose prediction is this <|seg|>
        new.append(nxt)
        if use_cache:
            ids = torch.tensor([[nxt]], device=batch.input_ids.device)
            pos = (torch.tensor(length, device=ids.device) + deltas.to(ids.device)).view(1, 1, 1).expand(3, 1, 1)
            length += 1
            with PreNormCatcher(model.qwen) as caught:
                out = qwen_model(
                    inputs_embeds=model.token_embeddings(ids).to(model.llm_dtype),
                    attention_mask=torch.ones(1, length, dtype=torch.long, device=ids.device),
                    cache=cache,
                    position_ids=pos,
                    use_cache=True,
                )
            cache = out.cache
            pre, post = caught.value, out.last_hidden_state
        else:
            current = append_tokens(current, [nxt])
            pre, post = _full_states(model, current)
        if nxt == seg_id and not released:
            states.append(post[0, -1])  # token mode: the state of the <|seg|> itself, now that it was fed
    return Generation(
        ids=new,
        text=tok.decode(new, skip_special_tokens=False),
        batch=append_tokens(batch, new) if new else batch,
        seg_states=torch.stack(states) if states else pre[0, :0],
        prompt_seg_states=prompt_states,
        steps=len(new),
    )


def _full_states(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncached: the full forward's pre-norm and post-norm states of a batch."""
    emb, enc, _ = model.embed(batch)
    post, pre = model._run_llm(batch, emb, enc)
    return pre, post
