"""Library messages a PixelQA user cannot act on (deprecations inside our dependencies, tips, banners), filtered
out of command-line runs. Set PIXELQA_LIBRARY_WARNINGS=1 to see everything."""

from __future__ import annotations

import logging
import os
import re
import warnings

# what UniPixelModule.on_validation_epoch_end logs from its JAndF / TaskAccuracy metrics
SYNCED_EPOCH_METRICS = r"val/(?:[JF](?:-recall|-decay)?|J&F|qa_acc|acc/[^']+)"

# warnings.warn messages (regular expressions matched at the start of the message)
IGNORED_WARNINGS: tuple[str, ...] = (
    r"`is_gradient_checkpointing` is deprecated",  # transformers' own Trainer hook, called by peft/Lightning glue
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch internals used by Lightning
    r"Checkpoint directory .* exists and is not empty",  # fit sets old checkpoints aside itself and says so
    r"Your `IterableDataset` has `__len__` defined",  # our stream splits itself by rank and worker
    r"You have overridden `transfer_batch_to_device`",  # deliberate: the module moves its Batch dataclass
    r"The '(train|val)_dataloader' does not have many workers",  # the demo runs on 1-2 cores by design
    # torchmetrics' compute() already sums these states over all ranks (every rank holds the global value), so
    # sync_dist would only average identical numbers; any other value logged per epoch without it still warns
    r"It is recommended to use `self\.log\('" + SYNCED_EPOCH_METRICS + r"', \.\.\., sync_dist=True\)`",
)

RANK_ZERO_NOISE = (r"GPU available", r"TPU available", r"💡 Tip", r"`Trainer\(limit_val_batches")  # Lightning banners

# log records, per emitting logger: (logger name, message patterns); None silences its INFO records altogether
IGNORED_LOGS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("mlflow.store.db.utils", None),  # "Creating initial MLflow database tables..."
    ("alembic.runtime.migration", None),  # database schema migrations of a new MLflow store
    ("lightning.pytorch.loggers.mlflow", (r"Experiment with name .* not found\. Creating it",)),
    ("lightning.pytorch.utilities.rank_zero", RANK_ZERO_NOISE),
    ("lightning.fabric.utilities.rank_zero", RANK_ZERO_NOISE),
    # a released config.json in transformers 5: the legacy `rope_scaling` (with Qwen2.5-VL's mrope_section) is
    # converted by transformers itself, and the release's own model type is read as Qwen2.5-VL's by pixelqa
    (
        "transformers.configuration_utils",
        (r"You are using a model of type `pixel_qwen2_5_vl`", r"\w+Config got `key=rope_scaling`"),
    ),
    (
        "transformers.modeling_rope_utils",
        (r"Unrecognized keys in `rope_parameters` for 'rope_type'='default': \{'mrope_section'\}",),
    ),
)


class MessageFilter(logging.Filter):
    """Drops records whose message starts with one of the patterns (all INFO and below when `patterns` is None)."""

    def __init__(self, patterns: tuple[str, ...] | None) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns] if patterns is not None else None

    def filter(self, record: logging.LogRecord) -> bool:
        """True to keep the record."""
        if self.patterns is None:
            return record.levelno > logging.INFO
        message = record.getMessage().lstrip()
        return not any(p.match(message) for p in self.patterns)


def silence_library_noise() -> None:
    """Install the filters above (idempotent); does nothing when PIXELQA_LIBRARY_WARNINGS=1."""
    if os.environ.get("PIXELQA_LIBRARY_WARNINGS") == "1":
        return
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, patterns in IGNORED_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MessageFilter) for f in logger.filters):
            logger.addFilter(MessageFilter(patterns))


OFF_WORDS = ("", "0", "false", "no", "off")  # TQDM_DISABLE values that leave progress bars on


def progress_enabled(progress: bool) -> bool:
    """Whether progress bars are drawn: `progress` asked for them and TQDM_DISABLE does not turn them off (any value
    but empty, 0, false, no or off). tqdm reads the variable only as the default of `disable`, which predict and
    Lightning's bar pass explicitly, so it is honoured here."""
    return progress and os.environ.get("TQDM_DISABLE", "").strip().lower() in OFF_WORDS
