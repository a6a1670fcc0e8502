"""Global-batch normalisation: the same 4 samples as one micro-batch of 4 (1x4) and as 4 accumulated
micro-batches of 1 (4x1) give the same gradient; the per-micro-batch mean (what training did before) does not."""

import pytest
import torch
from omegaconf import OmegaConf

from pixelqa.config import load_recipe, to_object
from pixelqa.train.datamodule import SourceIndex, build_synthetic, make_collator, prepare_sample
from pixelqa.train.module import Stage3Module
from pixelqa.train.normalise import StepBatch, StepGrouper, batch_counts, loss_scale, term_means


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shards")
    build_synthetic(root, "train", 24)
    cfg = load_recipe(["recipe=stage3", f"data.shards={root}"])
    module = Stage3Module(
        OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optim, resolve=True), 10
    )
    recipe = to_object(cfg)
    collate = make_collator(module.model.processor, recipe.data, recipe.model.memory.variant)
    source = SourceIndex(root, "synthetic", "train")
    # 2 samples with masks, 2 without, answers of different lengths: per-micro-batch means differ from global ones
    picked, lengths = [], set()
    for want_masks in (True, True, False, False):
        for i in range(len(source)):
            s = prepare_sample(source.read(i), recipe.data.num_frames, None)
            n = int((collate([s]).labels != -100).sum())
            if any(t.seg_objects for t in s.turns) == want_masks and n not in lengths:
                picked.append(s)
                lengths.add(n)
                break
    assert len(picked) == 4
    return module, collate, picked


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}


def _run(module, batches, old: bool = False):
    # dropout off (SAM's memory attention has some): its draws depend on how the samples are split
    module.model.eval()
    module.model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    counts = torch.stack([batch_counts(b) for b in batches]).sum(0)
    for i, b in enumerate(batches):
        if old:
            loss = module.model(b).loss
        else:
            loss = module._global_step_part(StepBatch(b, i, len(batches), counts))
        (loss / len(batches)).backward()  # Lightning divides each micro-batch loss by the accumulation
    return _grads(module)


def test_1x4_and_4x1_give_the_same_gradient(setup):
    module, collate, samples = setup
    one = _run(module, [collate(samples)])
    four = _run(module, [collate([s]) for s in samples])
    assert set(one) == set(four) and len(one) > 10
    worst = max(float((one[k] - four[k]).abs().max()) for k in one)
    assert worst < 1e-5, worst
    assert max(float(v.abs().max()) for v in one.values()) > 1e-3  # gradients are not trivially zero

    # the per-micro-batch mean: a different objective, told apart by the same comparison
    old_one = _run(module, [collate(samples)], old=True)
    old_four = _run(module, [collate([s]) for s in samples], old=True)
    assert max(float((old_one[k] - old_four[k]).abs().max()) for k in old_one) > 1e-3


def test_counts_of_a_batch_equal_the_model_counts(setup):
    module, collate, samples = setup
    batch = collate(samples)
    out = module.model(batch)
    mine = batch_counts(batch)
    assert [float(out.counts[k]) for k in ("lm_tokens", "mask_samples", "objectness_samples")] == mine[:3].tolist()
    assert mine[0] == int((batch.labels[:, 1:] != -100).sum()) and mine[1] == sum(
        m.shape[0] > 0 for m in batch.seg_masks
    )


def test_step_grouper_attaches_the_step_totals():
    batches = [_FakeBatch(n) for n in (3, 5, 7, 11, 13)]
    out = list(StepGrouper(batches, 2))
    assert [(p.index, p.per_step) for p in out] == [(0, 2), (1, 2), (0, 2), (1, 2), (0, 2)]
    assert [float(p.counts[0]) for p in out] == [8, 8, 18, 18, 13]


def test_loss_scale_counts_the_accumulation_once():
    assert loss_scale(4, 8, "ddp") == 32  # Lightning's /4, DDP's /8
    assert loss_scale(4, 8, "deepspeed") == 128  # DeepSpeed divides by its accumulation steps once more


class _FakeBatch:
    """Only what batch_counts reads: labels with n labelled next-token targets, no masks, no meta."""

    def __init__(self, n: int) -> None:
        self.labels = torch.full((1, n + 1), -100)
        self.labels[0, 1:] = 1
        self.seg_masks, self.meta = [], []


def test_logged_step_loss_is_the_whole_steps_not_the_last_micro_batchs(setup):
    module, collate, samples = setup
    _run(module, [collate([s]) for s in samples])  # 4 micro-batches of one step
    means = term_means(module._step_sums, module._step_local)
    w = module.model_cfg.loss
    logged = sum(float(getattr(w, t)) * v for t, v in means.items())
    with torch.no_grad():
        whole = float(module.model(collate(samples)).loss)
        last = float(module.model(collate(samples[-1:])).loss)
    assert abs(logged - whole) < 1e-4 * whole
    assert abs(last - whole) > 1e-2 * whole  # what was logged before: the last micro-batch


def _rank_worker(rank: int, folder: str, model_cfg: dict, optim_cfg: dict) -> None:
    """One of 2 gloo ranks: its 2 samples, the module's one all-reduce of counts, DDP's gradient average."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29547")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    module = Stage3Module(model_cfg, optim_cfg, 10)
    module.model.load_state_dict(torch.load(f"{folder}/weights.pt"))
    module.model.eval()
    batch = torch.load(f"{folder}/rank{rank}.pt", weights_only=False)
    grads = {}
    for name, loss_of in (
        ("global", lambda: module._global_step_part(StepBatch(batch, 0, 1, batch_counts(batch)))),
        ("per_rank_mean", lambda: module.model(batch).loss),
    ):
        module.model.zero_grad(set_to_none=True)
        loss_of().backward()
        for p in module.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= 2  # what DDP does: the mean over ranks
        grads[name] = _grads(module)
    if rank == 0:
        torch.save(grads, f"{folder}/grads.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_single_process_gradient(setup, tmp_path):
    import torch.multiprocessing as mp

    module, collate, samples = setup
    one = _run(module, [collate(samples)])  # the 4 samples in one process
    torch.save(module.model.state_dict(), tmp_path / "weights.pt")
    torch.save(collate(samples[:3]), tmp_path / "rank0.pt")  # 2 with masks and 1 without: uneven counts per rank
    torch.save(collate(samples[3:]), tmp_path / "rank1.pt")
    optim = dict(module.hparams["optim"])
    mp.start_processes(
        _rank_worker, args=(str(tmp_path), dict(module.hparams["model"]), optim), nprocs=2, start_method="spawn"
    )
    grads = torch.load(tmp_path / "grads.pt")
    assert max(float((one[k] - grads["global"][k]).abs().max()) for k in one) < 1e-5
    assert max(float((one[k] - grads["per_rank_mean"][k]).abs().max()) for k in one) > 1e-3
