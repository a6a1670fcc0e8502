"""Greedy generation for UniPixel with a KV cache: our embeddings at prefill, cached single-token steps after.

The prefill runs the ViT once and fills the `<|ref|>` / `<|mem|>` / media positions (`UniPixel.embed`); each later
step embeds only the new token (our rows for the three special tokens) and reuses transformers' cache, with the mRoPE
position of the step given explicitly (text positions continue from the prompt's rope delta). The state that feeds
each generated `<|seg|>`'s mask is kept (released: the pre-final-norm state of the position before it; seg_head=token:
the post-norm state of the `<|seg|>` itself), so masks are decoded once per `<|seg|>`, without a second LLM pass.
`use_cache=False` runs the full forward at every step (the reference the cached path is tested against).

A `PrefixCache` from an earlier forward of the same conversation (the two-pass protocol's pre-fill) lets the prefill
skip the positions both inputs share: the system prompt and the media, up to the first position where the token
ids differ or a `<|ref|>` / `<|seg|>` / `<|mem|>` sits (their embeddings depend on prompts and masks). What is left
must be text, whose mRoPE positions are the prompt's rope delta plus the index, so reuse is exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch
from pixelqa.model.backbone import PreNormCatcher
from pixelqa.prompt_format import MEM, REF, SEG

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel


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


@dataclass
class PrefixCache:
    """The KV cache of an earlier forward over a one-sample batch of the same conversation, and what it covers."""

    batch: Batch  # the earlier forward's input (ids, media, grids)
    cache: object  # transformers' Cache of that forward; cropped and extended in place when reused


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Both absent, or equal in shape and values."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))


def reusable_length(model: UniPixel, prefix: PrefixCache, batch: Batch) -> int:
    """How many leading positions of `batch` the prefix's forward computed exactly as `batch`'s own would (0: none)."""
    old, new = prefix.batch, batch
    for name in ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "second_per_grid_ts"):
        if not _same(getattr(old, name), getattr(new, name)):
            return 0  # other media: nothing is shared
    a, b = old.input_ids[0], new.input_ids[0]
    n = min(a.shape[0], b.shape[0], b.shape[0] - 1)  # at least one position is left to compute
    differ = (a[:n] != b[:n]).nonzero()
    n = int(differ[0]) if len(differ) else n
    special = torch.isin(b[:n], model.new_ids.to(b.device)).nonzero()
    if len(special):
        n = int(special[0])
    # released seg_head reads the state before a <|seg|>: keep that position out of the shared part
    n = max(n - 1, 0)
    media = (new.mm_token_type_ids[0] != 0).nonzero()
    if len(media) and n <= int(media[-1]):
        return 0  # media left to compute would need 3-D positions: recompute everything
    return n


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
    model: UniPixel,
    batch: Batch,
    max_new_tokens: int,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    visual_cache: dict | None = None,
    prefix: PrefixCache | None = None,
) -> Generation:
    """Greedy continuation of a one-sample batch; stops at the end-of-turn token; <|ref|>/<|mem|> never emitted.

    stop_at_eos=False bans the end-of-turn token instead (benchmarks that need an exact number of steps). `prefix`
    (cached path only) reuses an earlier forward's KV cache for the positions both inputs share.
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
    shared = reusable_length(model, prefix, batch) if prefix is not None and use_cache else 0
    if shared:
        post, pre, cache, deltas = _prefill_after(model, batch, emb, prefix.cache, shared)
    else:
        caches: list = []
        post, pre = model._run_llm(batch, emb, enc, cache=caches if use_cache else None)
        cache = caches[0] if use_cache else None
        deltas = qwen_model.rope_deltas
    prompt_seg = (batch.input_ids[0] == seg_id).nonzero().flatten()
    where = (prompt_seg - 1 if released else prompt_seg) - shared  # pre / post start at position `shared`
    prompt_states = torch.stack([_seg_state(model, pre, post, int(w)) for w in where]) if len(where) else pre[0, :0]
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


def _prefill_after(model, batch: Batch, emb: torch.Tensor, cache, shared: int) -> tuple:
    """Prefill of positions `shared:` on a cache holding the first `shared`: post / pre states, cache, rope delta."""
    qwen_model = model.qwen.model
    extra = cache.get_seq_length() - shared
    if extra:
        cache.crop(-extra)  # transformers counts the positions to drop from the end
    positions, deltas = qwen_model.get_rope_index(
        batch.input_ids,
        batch.mm_token_type_ids,
        image_grid_thw=batch.image_grid_thw,
        video_grid_thw=batch.video_grid_thw,
        second_per_grid_ts=batch.second_per_grid_ts,
        attention_mask=batch.attention_mask,
    )
    qwen_model.rope_deltas = deltas  # what a full prefill would leave for later steps
    with PreNormCatcher(model.qwen) as caught:
        out = qwen_model(
            inputs_embeds=emb[:, shared:].to(model.llm_dtype),
            attention_mask=batch.attention_mask,
            cache=cache,
            position_ids=positions[:, :, shared:],
            use_cache=True,
        )
    return out.last_hidden_state, caught.value, out.cache, deltas


def _full_states(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncached: the full forward's pre-norm and post-norm states of a batch."""
    emb, enc, _ = model.embed(batch)
    post, pre = model._run_llm(batch, emb, enc)
    return pre, post
