"""Lightning glue of the three training stages: what is trainable, optimizer groups, the step, validation scores.

Which parameters each stage trains (groups of `UniPixel.parameter_groups()`), as the release's `--tuning_modules`:

| stage | trains (release flags)                                                                    | lr         |
|-------|-------------------------------------------------------------------------------------------|------------|
| 1     | sparse_prompt_encoder: ref_proj_single/double, ref_proj, tem_emb, tem_proj (ref)          | optim.lr   |
| 2     | l2m (seg: seg_head)                                                                       | optim.lr   |
| 3     | backbone_lora (LoRA), new_token_rows, sparse_prompt_encoder (ref), ref_encoder (ref_enc), | lr /       |
|       | m2l (msk), l2m (seg), mask_decoder (sam2); recipe stage3 at scale=paper adds embeddings   | decoder_lr |
|       | (embedding) and mask_decoder_image_encoder (the rest of sam2)                             |            |

`ref_encoder` (the copy of SAM's prompt encoder inside the <|ref|> encoder) is frozen until stage 3, and the new
special-token rows (<|ref|> <|mem|> <|seg|>) are frozen in stages 1-2, as released (their rows are spare rows of the
base vocabulary there). `optim.extra_groups` adds groups to a stage: `[ref_encoder]` in stage 1 or
`[new_token_rows]` in stage 2 give this project's earlier choices (docs/departures.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torchmetrics import Metric

from pixelqa.batch import Batch
from pixelqa.checkpoints import safe_torch_load
from pixelqa.metrics.answers import TaskAccuracy, answer_exact_match
from pixelqa.metrics.video import JAndF
from pixelqa.model.config import UniPixelConfig
from pixelqa.train.finite import (
    WEIGHTS_SHOWN,
    NonFiniteStepError,
    check_finite_weights,
    grad_total_norm,
    step_flags,
    stop_message,
)
from pixelqa.train.normalise import (
    COUNT_KEYS,
    DATA_KEYS,
    DENOMINATOR,
    StepBatch,
    batch_counts,
    global_objective,
    loss_scale,
    term_means,
)
from pixelqa.train.schedule import build_scheduler, rebase_scheduler

log = logging.getLogger(__name__)

EXAMPLE_NAMES = 4  # parameter names shown when an optim.extra_trainable pattern matches none

GROUPS: tuple[str, ...] = (
    "backbone_lora",
    "new_token_rows",
    "sparse_prompt_encoder",
    "ref_encoder",
    "m2l",
    "l2m",
    "mask_decoder",
    "embeddings",
    "mask_decoder_image_encoder",
)


def model_config(model: Mapping[str, Any] | UniPixelConfig) -> UniPixelConfig:
    """A `UniPixelConfig` from a plain (nested) dict, as stored in checkpoints, or the config itself."""
    if isinstance(model, UniPixelConfig):
        return model
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(UniPixelConfig), dict(model)))


def step_seed(seed: int, micro_step: int, rank: int = 0) -> int:
    """The RNG seed of one micro-batch: a pure function of (run seed, micro-batch index, rank), so resume repeats
    it and ranks draw different dropout masks (rank 0 keeps the single-process seeds)."""
    return (int(seed) * 1_000_003 + int(micro_step) * 7_919 + int(rank) * 104_729 + 12_345) % (2**31 - 1)


class UniPixelModule(L.LightningModule):
    """A UniPixel network plus one stage's trainable set, optimizer groups, schedule and validation scores."""

    stage: int = 0
    trainable: tuple[str, ...] = ()

    def __init__(
        self,
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        total_steps: int,
        seed: int = 0,
        accumulate: int = 1,
        num_overlays: int = 0,
    ) -> None:
        super().__init__()
        # not sent to the logger: a run's MLflow params are its flattened recipe (fit logs them once), and Lightning
        # would log these again at every resume, where MLflow refuses a changed value (total_steps of a longer run)
        self.save_hyperparameters(logger=False)
        self.hparams["stage"] = self.stage
        from pixelqa.model.unipixel import UniPixel  # heavy import, kept out of module import time

        self.model_cfg = model_config(model)
        self.model = UniPixel(self.model_cfg)
        self.optim_cfg = dict(optim)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.accumulate = int(accumulate)
        self.num_overlays = int(num_overlays)
        self.val_jf = JAndF()
        self.val_acc = TaskAccuracy()
        self.val_loss = PassLoss(self.model_cfg.loss)
        # the optimizer step whose weights the last validation inside fit scored (None: none yet in this process):
        # pixelqa.fit does not validate the same weights again after fit
        self.validated_step: int | None = None
        self.overlays: list[dict[str, np.ndarray | str]] = []  # first val samples, for the overlay callback
        self._micro_step = 0
        self._step_totals: torch.Tensor | None = None  # counts of the current optimizer step, all ranks
        # loss-term sums of the current step on this rank (for logging), float64 on the device: copied to the host
        # once, at the step's end
        self._step_sums: dict[str, torch.Tensor] = {}
        # model.loss.mask=single: the micro-batches' own term means and counts, summed over the current step
        self._step_means: dict[str, torch.Tensor] = {}
        self._step_counts: dict[str, torch.Tensor] = {}
        self._step_parts = 0
        # the current step's objective and terms on this rank, checked for NaN / inf before its update; device tensors
        # while its micro-batches run (a float each would be a device sync per micro-batch)
        self._step_values: dict[str, torch.Tensor | float] = {}
        self._log_every: int | None = None  # trainer.log_every_n_steps while the run's last step is logged
        self.data_counts = dict.fromkeys(DATA_KEYS, 0.0)  # redraws / dropped / truncated, all ranks, whole run
        self.count_mismatches = 0
        self.stream_fingerprint: dict[str, Any] | None = None  # set by pixelqa.fit; saved in checkpoints
        self.base_reference: dict[str, Any] | None = None  # the frozen base model's identity, saved in checkpoints
        # the resolved recipe, flattened (`pixelqa.config.flatten`), and the validation shards' identities
        # (`val_stream`: manifest/<source>/<split> -> shards_identity): set by pixelqa.fit, saved in checkpoints, so
        # that a resume names every setting it changes (`pixelqa.fit.check_resume`)
        self.run_recipe: dict[str, Any] | None = None
        self.val_stream: dict[str, Any] | None = None
        self.configure_trainable()
        # Checkpoints hold only our weights (not the frozen base backbone, rebuilt from model.path / the tiny
        # seed), so resume loads them non-strictly; `on_load_checkpoint` checks nothing of ours is missing.
        self.strict_loading = False

    # ------------------------------------------------------------------ what trains
    def groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The model's parameter groups, checked against the names this module knows."""
        groups = self.model.parameter_groups()
        unknown = set(groups) - set(GROUPS)
        missing = set(self.trainable) - set(groups)
        if unknown or missing:
            raise ValueError(
                f"UniPixel.parameter_groups(): got keys {sorted(groups)}, expected {list(GROUPS)} "
                f"(unknown {sorted(unknown)}, missing {sorted(missing)})"
            )
        return groups

    def configure_trainable(self) -> None:
        """Freeze everything, then unfreeze this stage's groups."""
        self.model.requires_grad_(False)
        groups = self.groups()
        extra_groups = list(self.optim_cfg.get("extra_groups") or [])
        unknown = [g for g in extra_groups if g not in groups]
        if unknown:
            raise ValueError(f"optim.extra_groups: unknown {unknown}, expected names from {sorted(groups)}")
        for name in [*self.trainable, *extra_groups]:
            for p in groups[name]:
                p.requires_grad_(True)
        # SAM's image encoder runs under no_grad unless it is trained
        self.model.mask_decoder.train_image_encoder = "mask_decoder_image_encoder" in extra_groups
        extra = list(self.optim_cfg.get("extra_trainable") or [])
        hits = {pat: 0 for pat in extra}
        # every name a parameter has: a tied LM head (the 3B release) is the input embedding under `lm_head.weight`
        for pname, p in self.model.named_parameters(remove_duplicate=False):
            for pat in extra:
                if pat in pname:
                    p.requires_grad_(True)
                    hits[pat] += 1
        unmatched = [pat for pat, n in hits.items() if n == 0]
        if unmatched:
            from pixelqa.train.datamodule import EveryRankError  # every rank builds the same model: rank 0 says it

            names = [name for name, _ in self.model.named_parameters()]
            raise EveryRankError(
                f"optim.extra_trainable: {unmatched} match no parameter name of the model (a pattern is a substring "
                f"of a name; e.g. {', '.join(names[:: max(1, len(names) // EXAMPLE_NAMES)][:EXAMPLE_NAMES])})"
            )
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(f"stage {self.stage}: groups {self.trainable} hold no parameters; nothing would train")

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """AdamW param groups: the mask decoder at optim.decoder_lr, the backbone's trainable weights at
        optim.backbone_lr when set, every other trainable parameter at optim.lr."""
        groups = self.groups()
        in_decoder = {id(p) for p in groups["mask_decoder"] + groups["mask_decoder_image_encoder"]}
        lrs = self.group_lrs()
        in_backbone = {id(p) for p in self.model.backbone.parameters()} if lrs["backbone"] is not None else set()
        named: dict[str, list[torch.nn.Parameter]] = {name: [] for name in lrs}
        for p in self.model.parameters():  # unique parameters, extra_trainable ones included
            if p.requires_grad:
                group = "mask_decoder" if id(p) in in_decoder else "backbone" if id(p) in in_backbone else "main"
                named[group].append(p)
        return [{"params": ps, "lr": float(lrs[n]), "name": n} for n, ps in named.items() if ps]

    def group_lrs(self) -> dict[str, float | None]:
        """The recipe's base lr of each optimizer group by name (backbone: None when optim.backbone_lr is unset)."""
        backbone_lr = self.optim_cfg.get("backbone_lr")
        return {
            "main": float(self.optim_cfg["lr"]),
            "backbone": None if backbone_lr is None else float(backbone_lr),
            "mask_decoder": float(self.optim_cfg["decoder_lr"]),
        }

    def _rebase_schedule(self) -> None:
        """Lightning restores a resumed run's param groups and scheduler (base lrs included) after
        `configure_optimizers`: put this recipe's base lrs back, and every group's lr at this schedule's value for
        the step resumed, so that a changed optim.lr / decoder_lr / backbone_lr or a longer run takes effect there;
        likewise the recipe's betas and weight_decay (restored per group too). Unchanged settings give back the
        restored values exactly."""
        lrs = self.group_lrs()
        settings = self.adamw_settings()
        for config in self.trainer.lr_scheduler_configs:
            groups = config.scheduler.optimizer.param_groups
            unknown = [g.get("name") for g in groups if lrs.get(g.get("name")) is None]
            if unknown:
                raise ValueError(
                    f"ckpt: optimizer groups {unknown} of the checkpoint have no lr in this recipe, expected groups "
                    f"from {sorted(n for n, lr in lrs.items() if lr is not None)}"
                )
            rebase_scheduler(config.scheduler, [lrs[g["name"]] for g in groups])
            for group in groups:
                group.update(settings)

    def adamw_settings(self) -> dict[str, Any]:
        """The recipe's AdamW betas and weight_decay (the same for every param group)."""
        betas = tuple(float(b) for b in self.optim_cfg.get("betas", (0.9, 0.999)))
        return {"betas": betas, "weight_decay": float(self.optim_cfg.get("weight_decay", 0.0))}

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + per-step warm-up/cosine schedule over the run's optimizer steps."""
        opt = torch.optim.AdamW(self.optimizer_groups(), **self.adamw_settings())
        sched = build_scheduler(opt, self.total_steps, float(self.optim_cfg.get("warmup_ratio", 0.03)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ steps
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the Batch / StepBatch dataclass (tensors inside prompt and memory lists too). Lightning calls this
        before any other hook of a training batch: from the run's last step on, that step is logged (`_log_last_step`).
        """
        if self._trainer is not None and self.trainer.training:
            self._log_last_step()
        return (
            batch.to(device)
            if isinstance(batch, (Batch, StepBatch))
            else super().transfer_batch_to_device(batch, device, dataloader_idx)
        )

    def on_train_start(self) -> None:
        """Position the micro-batch counter (a resumed run starts where its checkpoint stopped) and, on a resume, put
        this recipe's learning rates into the restored schedule."""
        self._micro_step = self.trainer.global_step * self.accumulate
        if self.trainer.ckpt_path is not None:
            self._rebase_schedule()

    def _log_last_step(self) -> None:
        """Lightning logs only the steps `trainer.log_every_n_steps` divides: a run shorter than it logged no train/*
        and no learning rate at all, and the last `max_steps % n` steps were never logged. From the run's last step
        on (set before that step's hooks, so the learning-rate monitor logs it too) every step is logged: the last
        one, once."""
        trainer = self.trainer
        if trainer.log_every_n_steps and 0 < trainer.max_steps <= trainer.global_step + 1:
            self._log_every = self._log_every or trainer.log_every_n_steps
            trainer.log_every_n_steps = 1

    def on_train_end(self) -> None:
        """Give the trainer its `log_every_n_steps` back (changed for the last step by `_log_last_step`)."""
        if self._log_every is not None:
            self.trainer.log_every_n_steps, self._log_every = self._log_every, None

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Seed every RNG from (seed, micro-batch index): dropout and sampling repeat exactly after a resume."""
        seed = step_seed(self.seed, self._micro_step, self.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        self._micro_step += 1

    def training_step(self, batch: Batch | StepBatch, batch_idx: int) -> torch.Tensor:
        """One teacher-forced forward; a StepBatch back-propagates its part of the global-batch objective."""
        if isinstance(batch, StepBatch):
            return self._global_step_part(batch)
        out = self.model(batch)
        n = batch.size
        self.log("train/loss", out.loss, prog_bar=True, batch_size=n)
        for name, value in (out.losses or {}).items():
            self.log(f"train/{name}", value, batch_size=n)
        for name, value in {"loss": out.loss, **(out.losses or {})}.items():
            self._hold_value(name, value)
        return out.loss

    def _hold_value(self, name: str, value: torch.Tensor) -> None:
        """Keep a micro-batch's term for the step's check, on the device: its latest value, except that a NaN / inf
        stays until the check (`on_before_optimizer_step`), whatever follows it."""
        value = value.detach()
        kept = self._step_values.get(name)
        self._step_values[name] = value if kept is None else torch.where(torch.isfinite(kept), value, kept)

    def _global_step_part(self, part: StepBatch) -> torch.Tensor:
        """This micro-batch's share of the step objective (`pixelqa.train.normalise`); logs at the step's end."""
        if part.index == 0:
            totals = part.counts.to(self.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(totals)  # counts of every rank (the step's other collective: flags)
            self._step_totals = totals
            self._step_sums = {}
            self._step_local = part.counts.clone()
            self._step_means, self._step_counts, self._step_parts = {}, {}, 0
        out = self.model(part.batch)
        for k, v in out.sums.items():
            self._step_sums[k] = self._step_sums.get(k, 0.0) + v.detach().double()
        if self.model_cfg.loss.mask != "released":
            self._add_micro_batch_means(out)
        if part.index == part.per_step - 1:
            self._log_step(part)
        if self.model_cfg.loss.mask != "released":
            # per-object mask counts are only known after the forward: the micro-batch mean, as before
            return out.loss
        got, own = self._out_counts(out), batch_counts(part.batch)[: len(COUNT_KEYS)]
        if not torch.equal(got, own):
            self.count_mismatches += 1  # still trains, on the pre-counted totals; said once
            if self.count_mismatches == 1:
                log.warning("loss counts %s of the model differ from the batch's %s", got.tolist(), own.tolist())
        world = self.trainer.world_size if self._trainer is not None else _dist_world()
        strategy = type(self.trainer.strategy).__name__.lower() if self._trainer is not None else "ddp"
        totals = self._step_totals[: len(COUNT_KEYS)].to(out.loss.dtype)
        objective = global_objective(out.sums, totals, self.model_cfg.loss)
        objective = objective + out.loss * 0.0  # keeps every trainable parameter in the graph (DDP)
        return objective * loss_scale(part.per_step, world, "deepspeed" if "deepspeed" in strategy else "ddp")

    @staticmethod
    def _out_counts(out: Any) -> torch.Tensor:
        """(len(COUNT_KEYS),) float64 on the CPU: the forward's loss counts, with one device-to-host copy."""
        device = out.loss.device
        counts = [torch.as_tensor(out.counts[k], dtype=torch.float64, device=device).reshape(()) for k in COUNT_KEYS]
        return torch.stack(counts).cpu()

    def _add_micro_batch_means(self, out: Any) -> None:
        """model.loss.mask=single: add a micro-batch's own term means (the objective it back-propagates) and counts."""
        self._step_parts += 1
        for term, count in DENOMINATOR.items():
            if term in out.losses:  # on the device: added up without a sync, copied once at the step's end
                self._step_means[term] = self._step_means.get(term, 0.0) + out.losses[term].detach().double()
                counted = torch.as_tensor(out.counts[count]).detach().double()
                self._step_counts[term] = self._step_counts.get(term, 0.0) + counted

    def _step_terms(self) -> tuple[dict[str, float], dict[str, float]]:
        """Each loss term of the current step on this rank, as the step's objective has it, and its count."""
        if self.model_cfg.loss.mask == "released":  # the step's sums over its pre-counted totals (`normalise`)
            index = {k: i for i, k in enumerate(COUNT_KEYS)}
            local = self._step_local.cpu()
            means = term_means(dict(zip(self._step_sums, host_floats(list(self._step_sums.values())))), local)
            return means, {t: float(local[index[DENOMINATOR[t]]]) for t in means}
        # `single` counts masks only the forward knows: each micro-batch's own means, averaged over the step's
        # micro-batches as Lightning averages their losses (a micro-batch without masks adds 0 to its mask terms)
        parts = max(self._step_parts, 1)
        terms = list(self._step_means)
        values = host_floats([*(self._step_means[t] for t in terms), *(self._step_counts[t] for t in terms)])
        return {t: v / parts for t, v in zip(terms, values)}, dict(zip(terms, values[len(terms) :]))

    def _log_step(self, part: StepBatch) -> None:
        """Log the step's objective (this rank's samples, every micro-batch), each term that some sample of the step
        has (a term counting nothing leaves a gap, not a 0) and the data counters."""
        means, counts = self._step_terms()
        w = self.model_cfg.loss
        loss = sum(float(getattr(w, t)) * v for t, v in means.items())
        self._step_values = {**means, "loss": loss}  # checked before the update (`on_before_optimizer_step`)
        n = part.batch.size
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for name, value in means.items():
            if counts[name] > 0:
                self.log(f"train/{name}", value, batch_size=n)
        self._forget_logged({f"train/{t}" for t, c in counts.items() if c <= 0})
        totals = self._step_totals.cpu()
        for i, key in enumerate(DATA_KEYS):
            self.data_counts[key] += float(totals[len(COUNT_KEYS) + i])
            self.log(f"data/{key}", self.data_counts[key], batch_size=n)

    def _forget_logged(self, names: set[str]) -> None:
        """Drop `names` from Lightning's step results: it logs a name's last value again at every later logged step,
        so a term absent from this step would repeat an old value instead of leaving a gap."""
        results = getattr(self._trainer, "_results", None)  # Lightning's (private) results of the running loop
        for metric in (results or {}).values():
            if metric.meta.name in names:
                metric.has_reset = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop the run before this update when the step's objective or gradient norm is NaN / inf: every rank alike
        (`pixelqa.train.finite`), so no weight, and no checkpoint, ever holds the result. Once per optimizer step:
        DeepSpeed (which accumulates itself) has Lightning call this on every micro-batch, and every rank counts the
        same micro-batches, so all skip the same calls and make the same all-reduces."""
        if self._micro_step % max(self.accumulate, 1):
            # not the step's last micro-batch (the training stream is endless, so every step has `accumulate`
            # of them, as `on_train_start` and the datamodule's resume position also count): no update runs now
            return
        values, self._step_values = self._step_values, {}
        names = [*DENOMINATOR, "loss"]  # one fixed order: the flags of every rank line up
        # under fp16 loss scaling an inf gradient is the scaler's cue to skip the step and lower its scale
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        norm = None if scaled else grad_total_norm(p for g in optimizer.param_groups for p in g["params"])
        flags = step_flags(names, values, norm, self.device)
        if _dist_world() > 1:  # the objective is per rank: every rank stops if any must
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad = flags.tolist()  # the step's one device-to-host copy of the check
        if any(bad):
            shown = {name: float(value) for name, value in values.items()}  # copied only for the message
            lrs = {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
            bad_terms = [name for name, flag in zip(names, bad) if flag]
            step = self.trainer.global_step
            raise NonFiniteStepError(stop_message(step, bad_terms, shown, bool(bad[-1]), lrs, self.optim_cfg))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Teacher-forced forward: loss sums (logged per pass), J&F of the <|seg|> masks, exact-match answers."""
        out = self.model(batch)
        n = batch.size
        # summed, not logged per batch: a mean of batch means would depend on val_batch_size and the processes
        self.val_loss.update(out.sums or {}, out.counts or {}, n)
        update_mask_metric(self.val_jf, out.pred_masks, batch)
        if out.logits is not None:
            correct, scored = answer_exact_match(out.logits, batch.labels)
            keep = [i for i in range(n) if scored[i] and batch.tasks[i] in self.val_acc.tasks]
            if keep:
                self.val_acc.update(correct[keep], [batch.tasks[i] for i in keep])
        if len(self.overlays) < self.num_overlays and self.trainer.is_global_zero:
            self.overlays.extend(overlay_items(batch, out.pred_masks, self.num_overlays - len(self.overlays)))

    def on_validation_epoch_start(self) -> None:
        """Collect fresh overlays each validation."""
        self.overlays = []

    def on_validation_epoch_end(self) -> None:
        """Log the pass's loss and terms (`PassLoss`), the samples it scored out of those expected, J, F, J&F and
        the accuracies (per task, and pooled over QA tasks as `val/qa_acc`)."""
        passed = epoch_values(self.val_loss, self.trainer.world_size)
        self.val_loss.reset()
        # values already summed over every process: sync_dist averages identical numbers (and keeps Lightning
        # from warning that an epoch value of DDP was logged without it)
        for name, value in passed.items():
            self.log("val/loss" if name == "loss" else f"val/{name}", float(value), sync_dist=True)
        expected = self._expected_samples()
        if passed and expected is not None:
            self.log("val/samples_expected", float(expected), sync_dist=True)
            self.log("val/samples_skipped", float(expected) - float(passed["samples"]), sync_dist=True)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.validated_step = self.trainer.global_step
        jf = epoch_values(self.val_jf, self.trainer.world_size)
        for name, value in jf.items():
            self.log(f"val/{name}", value, prog_bar=name == "J&F")
        self.val_jf.reset()
        acc = self.val_acc.compute()
        for name, value in acc.items():
            self.log("val/qa_acc" if name == "qa" else f"val/acc/{name}", value, prog_bar=name == "qa")
        self.val_acc.reset()

    def _expected_samples(self) -> int | None:
        """Samples the validation pass was asked to score, all processes (`EvalBatches.expected`); None if unknown."""
        loader = self.trainer.val_dataloaders
        expected = getattr(getattr(loader, "dataset", None), "expected", None)
        return int(expected) if expected is not None else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the stage (for `init_from` checks), the data stream, base model and recipe (for resume checks), and
        drop the frozen base backbone weights."""
        checkpoint["pixelqa_stage"] = self.stage
        checkpoint["pixelqa_data_counts"] = dict(self.data_counts)
        if self.stream_fingerprint is not None:
            checkpoint["pixelqa_stream"] = dict(self.stream_fingerprint)
        if self.base_reference is not None:
            checkpoint["pixelqa_base"] = dict(self.base_reference)
        if self.run_recipe is not None:  # plain data: read back without unpickling code (guards.read_resume_metadata)
            checkpoint["pixelqa_recipe"] = dict(self.run_recipe)
        if self.val_stream is not None:
            checkpoint["pixelqa_val_stream"] = dict(self.val_stream)
        ours = {f"model.{k}" for k in self.model.trainable_state_dict()}  # extra_trainable weights included
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in ours}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that holds NaN / inf weights, lacks any of ours (the base backbone is not stored) or
        holds them in other shapes (changed model settings)."""
        path = self._trainer.ckpt_path if self._trainer is not None else None
        self.data_counts.update(checkpoint.get("pixelqa_data_counts") or {})
        if "state_dict" not in checkpoint:
            # DeepSpeed: Lightning hands over the engine's client state, which leaves the weights out (the engine
            # loads them itself, from its own model-states files, checked by pixelqa.train.guards before the load)
            return
        check_finite_weights(checkpoint["state_dict"], f"ckpt={path or 'checkpoint'}")
        ours = self.model.trainable_state_dict()
        missing = [f"model.{k}" for k in ours if f"model.{k}" not in checkpoint["state_dict"]]
        if missing:
            raise ValueError(
                f"checkpoint: {len(missing)} weights of this model are absent (e.g. {missing[:3]}); expected a "
                f"stage-{self.stage} checkpoint of the same model config (for another stage use init_from=)"
            )
        what = f"ckpt={path or 'checkpoint'}"
        check_shapes(checkpoint["state_dict"], {f"model.{k}": v for k, v in ours.items()}, what)
        self.model.keep_backbone_weights(k.removeprefix("model.") for k in checkpoint["state_dict"])


class Stage1Module(UniPixelModule):
    """Stage 1: pre-train the <|ref|> encoder's projections and temporal embedding on regional captioning."""

    stage = 1
    trainable = ("sparse_prompt_encoder",)  # the release's `ref`: its SAM prompt-encoder copy stays frozen


class Stage2Module(UniPixelModule):
    """Stage 2: train the L->M projector on referring segmentation (SAM and the token rows frozen, as released)."""

    stage = 2
    trainable = ("l2m",)  # the release's `seg` (seg_head only)


class Stage3Module(UniPixelModule):
    """Stage 3: LoRA on ViT + LLM, M->L, L->M, the whole <|ref|> encoder, new rows and the mask decoder, jointly."""

    stage = 3
    trainable = (
        "backbone_lora",
        "new_token_rows",
        "sparse_prompt_encoder",
        "ref_encoder",
        "m2l",
        "l2m",
        "mask_decoder",
    )


def host_floats(tensors: list[torch.Tensor]) -> list[float]:
    """The values of () tensors on one device, with one device-to-host copy for all of them."""
    return torch.stack([t.reshape(()) for t in tensors]).tolist() if tensors else []


def check_shapes(stored: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse (a recipe error, exit 2) a resume whose stored weights have other shapes than this model's: the model
    settings changed since the checkpoint (e.g. model.hidden_tokens or model.mask_decoder.arch)."""
    bad = [
        (k, tuple(stored[k].shape), tuple(v.shape))
        for k, v in ours.items()
        if k in stored and tuple(stored[k].shape) != tuple(v.shape)
    ]
    if not bad:
        return
    from pixelqa.train.datamodule import EveryRankError  # every rank loads the same file: rank 0 reports it

    shown = "; ".join(f"{k}: {a} in the checkpoint, {b} here" for k, a, b in bad[:WEIGHTS_SHOWN])
    more = "; ..." if len(bad) > WEIGHTS_SHOWN else ""
    raise EveryRankError(
        f"{what}: {len(bad)} stored weights have other shapes than this model's ({shown}{more}); a resume needs the "
        "model settings of the run it continues: put back the changed model.* settings, or start a new run "
        "(no ckpt=) to change them"
    )


def _dist_world() -> int:
    """Processes of the initialised torch.distributed group (1 without one): the world outside a Trainer."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


STAGE_MODULES: dict[int, type[UniPixelModule]] = {1: Stage1Module, 2: Stage2Module, 3: Stage3Module}


def module_class(stage: int) -> type[UniPixelModule]:
    """The LightningModule class of a stage."""
    if stage not in STAGE_MODULES:
        raise ValueError(f"stage: got {stage!r}, expected one of {sorted(STAGE_MODULES)}")
    return STAGE_MODULES[stage]


# ---------------------------------------------------------------------------------------------- helpers


class PassLoss(Metric):
    """The validation loss of a whole pass as one objective, the training step's normalisation applied to the pass.

    Each term is summed over every sample of the pass, on every process, and divided by its count over the pass
    (`pixelqa.train.normalise.DENOMINATOR`: labelled next-token targets for `lm`; samples with <|seg|> masks for
    focal, dice and IoU; those samples again for objectness), as `UniPixel.forward` reports sums and counts; `loss`
    weighs the terms as training does. So the value depends on the model and the samples, not on how they fall into
    batches or processes. `samples` counts the samples scored.
    """

    full_state_update = False
    TERMS: tuple[str, ...] = tuple(DENOMINATOR)

    def __init__(self, weights: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights = [float(getattr(weights, t)) for t in self.TERMS]
        # float64: thousands of per-token and per-sample terms summed without float32's rounding
        self.add_state("sums", default=torch.zeros(len(self.TERMS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(COUNT_KEYS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scored", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sums: Mapping[str, Any], counts: Mapping[str, Any], samples: int) -> None:
        """Add one batch: its summed loss terms and counts (`UniPixelOutput.sums` / `.counts`) and its sample count
        (a batch without loss sums adds its samples only)."""
        self.samples += float(samples)
        if not all(t in sums for t in self.TERMS) or not all(k in counts for k in COUNT_KEYS):
            return
        dev = self.sums.device
        self.sums += torch.stack([torch.as_tensor(sums[t]).detach().to(dev, torch.float64) for t in self.TERMS])
        self.counts += torch.stack([torch.as_tensor(counts[k]).detach().to(dev, torch.float64) for k in COUNT_KEYS])
        self.scored += 1.0

    def compute(self) -> dict[str, torch.Tensor]:
        """{"samples": n} plus, when any batch had loss sums, each term's pass mean and the weighted `loss`."""
        out = {"samples": self.samples}
        if float(self.scored) == 0:
            return out
        index = {k: i for i, k in enumerate(COUNT_KEYS)}
        loss = torch.zeros((), dtype=torch.float64, device=self.sums.device)
        for i, term in enumerate(self.TERMS):
            # an empty count gives 0, as the training objective's clamp does
            out[term] = self.sums[i] / self.counts[index[DENOMINATOR[term]]].clamp(min=1.0)
            loss = loss + self.weights[i] * out[term]
        out["loss"] = loss
        return out


def epoch_values(metric: Any, world_size: int) -> dict[str, torch.Tensor]:
    """A metric's values over the epoch, {} when no process fed it.

    `compute()` gathers the states of all processes, so under DDP every process calls it, fed or not: a process whose
    share of the validation set held no mask would otherwise skip it, and the others' gather would pair with its next
    metric's (a hang, or states of the wrong metric summed).
    """
    if world_size <= 1 and metric.update_count == 0:
        return {}
    with warnings.catch_warnings():  # a process without updates is expected here
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        values = metric.compute()
    return {} if all(bool(torch.isnan(v).all()) for v in values.values()) else values


def update_mask_metric(metric: JAndF, pred_masks: list[torch.Tensor] | None, batch: Batch) -> int:
    """Feed every <|seg|> object of the batch to a J&F metric (annotated frames only); returns objects added."""
    if not pred_masks:
        return 0
    added = 0
    for i, target in enumerate(batch.seg_masks):
        if i >= len(pred_masks) or target.numel() == 0:
            continue
        pred = pred_masks[i] > 0  # (K, T, H, W) logits -> bool
        valid = batch.seg_valid[i] if i < len(batch.seg_valid) else torch.ones(target.shape[:2], dtype=torch.bool)
        for k in range(min(pred.shape[0], target.shape[0])):
            frames = valid[k].to(target.device)  # (T,) annotated frames
            if frames.any():
                metric.update(pred[k][frames], target[k][frames].bool())
                added += 1
    return added


def overlay_items(batch: Batch, pred_masks: list[torch.Tensor] | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` samples with masks as numpy: frames (T, H, W, 3) uint8, pred / target (K, T, H, W) bool."""
    items: list[dict[str, Any]] = []
    for i in range(batch.size):
        if len(items) >= limit:
            break
        if not pred_masks or i >= len(pred_masks) or i >= len(batch.seg_masks) or batch.seg_masks[i].numel() == 0:
            continue
        frames = batch.frames[i].permute(0, 2, 3, 1).cpu().numpy()  # (T, 3, H, W) -> (T, H, W, 3)
        items.append(
            {
                "key": batch.keys[i] if i < len(batch.keys) else f"sample{i}",
                "frames": frames.astype(np.uint8),
                "pred": (pred_masks[i] > 0).cpu().numpy(),
                "target": batch.seg_masks[i].bool().cpu().numpy(),
            }
        )
    return items


def _normalise_key(key: str) -> str:
    """A state-dict key with peft wrapping removed, so weights move between LoRA and plain backbones."""
    return key.replace("base_model.model.", "").replace(".base_layer", "")


def read_checkpoint(
    path: str | Path, trust: bool = False, what: str = "init_from", hint: str | None = None
) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU without running code from it (`pixelqa.checkpoints`; `trust` lifts that),
    with a clear error for a missing file; a refused file raises CheckpointError (a ValueError) naming `what`, and
    `hint` (default: the recipe key) says how the caller trusts it."""
    hint = hint or TRUST_HINT
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.exists():
                path = candidate
                break
    if path.is_dir() and (path / "checkpoint").is_dir():
        return read_deepspeed_checkpoint(path, trust, what, hint)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {str(path)!r} is not a checkpoint file (or a run folder holding one)")
    return safe_torch_load(path, trust, what=what, hint=hint)


TRUST_HINT = "Set trust_checkpoint=true"  # how a recipe trusts a checkpoint that needs full unpickling
DEEPSPEED_PREFIX = "_forward_module."  # Lightning's wrapper around the module inside the DeepSpeed engine


def read_deepspeed_checkpoint(
    path: str | Path, trust: bool = False, what: str = "init_from", hint: str | None = None
) -> dict[str, Any]:
    """A DeepSpeed (ZeRO-1/2) checkpoint directory as a Lightning checkpoint dict: its client state (stage, global
    step, ...) with `state_dict` taken from the rank-0 model states (trained weights only, frozen ones excluded)."""
    files = sorted(Path(path).glob("checkpoint/mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(
            f"{what}: {str(path)!r} has no checkpoint/mp_rank_00_model_states.pt; expected a DeepSpeed "
            "checkpoint directory (ZeRO-3 shards need lightning's convert_zero_checkpoint_to_fp32_state_dict)"
        )
    states = safe_torch_load(files[0], trust, what=what, hint=hint or TRUST_HINT)
    module = states.get("module") or {}
    ckpt = {k: v for k, v in states.items() if k not in ("module", "optimizer")}
    ckpt["state_dict"] = {k.removeprefix(DEEPSPEED_PREFIX): v for k, v in module.items()}
    return ckpt


def checkpoint_stage(ckpt: Mapping[str, Any]) -> int | None:
    """The stage a checkpoint was trained in (None when it does not say)."""
    if "pixelqa_stage" in ckpt:
        return int(ckpt["pixelqa_stage"])
    stage = (ckpt.get("hyper_parameters") or {}).get("stage")
    return int(stage) if stage is not None else None


def model_from_checkpoint(
    model_cfg: dict, ckpt: Mapping[str, Any] | None, path: str, stage: int, seed: int = 0
) -> torch.nn.Module:
    """The UniPixel network of `model_cfg` with a fit checkpoint's weights (None: as initialised), built as the
    checkpoint's stage (`stage` when it records none)."""
    stage = (checkpoint_stage(ckpt) if ckpt is not None else None) or stage
    module = module_class(stage)(model=model_cfg, optim={"lr": 0.0, "decoder_lr": 0.0}, total_steps=1, seed=seed)
    if ckpt is not None:
        load_init_weights(module, ckpt, path)
    return module.model


def check_init_stage(ckpt: Mapping[str, Any], stage: int, path: str) -> None:
    """Stage N starts from stage N-1 (or continues from stage N); anything else is an error naming both."""
    got = checkpoint_stage(ckpt)
    if got is None:
        raise ValueError(f"init_from={path}: the checkpoint records no stage; expected a PixelQA stage checkpoint")
    if got not in (stage - 1, stage):
        start = (
            f"a stage-{stage - 1} checkpoint (stage {stage} starts from stage {stage - 1}) or a stage-{stage} one"
            if stage > 1
            else "a stage-1 checkpoint, or no init_from (stage 1 starts from the base model)"
        )
        raise ValueError(f"init_from={path}: checkpoint of stage {got}, but this is stage {stage}; expected {start}")


def load_init_weights(
    module: UniPixelModule, ckpt: Mapping[str, Any], path: str, finite_checked: bool = False
) -> dict[str, list[str]]:
    """Copy a previous stage's weights into `module`; LoRA keys missing from the source start fresh. Weights holding
    NaN / inf are refused (a recipe error naming `path` and the first such tensors), unless the caller has checked
    this `ckpt` already (`finite_checked`: fit checks before any run exists, and a second scan reads every weight
    again).

    Returns {"missing": [...], "skipped": [...]} (target keys left at init, source keys not used).
    """
    if not finite_checked:
        check_finite_weights(ckpt["state_dict"], f"init_from={path}")
    source = {_normalise_key(k): v for k, v in ckpt["state_dict"].items()}
    target = module.state_dict()
    new_state, missing = {}, []
    for key, value in target.items():
        norm = _normalise_key(key)
        if norm in source and tuple(source[norm].shape) == tuple(value.shape):
            new_state[key] = source[norm]
        elif norm in source:
            raise ValueError(
                f"init_from={path}: weight {key} has shape {tuple(source[norm].shape)} in the checkpoint but "
                f"{tuple(value.shape)} here; expected the same model preset/config as the previous stage"
            )
        else:
            missing.append(key)
    base = set(target) - {f"model.{k}" for k in module.model.trainable_state_dict()}  # rebuilt, never stored
    bad = [k for k in missing if "lora_" not in k and k not in base]
    if bad:
        raise ValueError(
            f"init_from={path}: {len(bad)} weights of this model are absent from the checkpoint (e.g. {bad[:3]}); "
            "expected a checkpoint of the same model preset/config"
        )
    module.load_state_dict(new_state, strict=False)
    module.model.keep_backbone_weights(k.removeprefix("model.") for k in new_state)
    used = {_normalise_key(k) for k in new_state}
    return {"missing": missing, "skipped": sorted(set(source) - used)}
