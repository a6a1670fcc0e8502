"""MLflow tracking: logger factory, parent/child runs, params, artifacts and result tables.

Every fit or evaluation is one MLflow run in a local SQLite store (`mlruns.db` in the working directory by
default) with an explicit artifact folder: `tracking.artifact_location`, by default `mlartifacts` beside a local
store (the SQLite file's folder; see `resolve_uris`), so that a store moved elsewhere takes its artifacts along.
A grid (`pixelqa.grid`) is one parent run with one child run per cell:

    parent = start_parent_run("my-grid", tracking_cfg)          # returns the parent's run id
    for cell in cells:
        pixelqa.fit.run(cell_args, parent_run_id=parent)         # the child run is tagged mlflow.parentRunId
    end_run(parent, tracking_cfg)

Metric names may use '&' (e.g. `val/J&F`); MLflow refuses it, so it is logged as `val/J_and_F`.

Before the first run of a process touches a store, `prepare_store` (under a file lock beside the SQLite file, so
concurrent first starts on a fresh store do not race to create its tables or the experiment) creates the experiment,
tags it as a model-training experiment (the MLflow UI then opens on its runs, not on GenAI traces), and marks
KILLED every run of this host left RUNNING by a process that no longer exists (runs carry the pid, host and
process start time of their owner).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from lightning.pytorch.loggers import MLFlowLogger

PARENT_TAG = "mlflow.parentRunId"
RUN_ID_FILE = "mlflow_run_id.txt"
EXCLUDED_PARAMS = ("ckpt", "presets")  # differ between a run and its resume: MLflow forbids changing a param
# The experiment tag MLflow 3's UI reads to choose its landing page ("custom_model_development": the runs table).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
OWNER_TAGS = ("pixelqa.host", "pixelqa.pid", "pixelqa.pid_start")
# A child run replaced by a later run of the same name (a grid cell rerun with other settings): tables of a
# parent's children leave it out (`child_runs`); it stays in the store, pointing at the run that replaced it.
SUPERSEDED_TAG = "pixelqa.superseded"
SUPERSEDED_BY_TAG = "pixelqa.superseded_by"
SUPERSEDED_REASON_TAG = "pixelqa.superseded_reason"
TAG_LIMIT = 5000  # characters of a tag value every MLflow store accepts


# The defaults of `pixelqa.config.TrackingConfig` (recipes/tracking/mlflow.yaml writes the same values).
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts ('&' is not allowed): `val/J&F` -> `val/J_and_F`."""
    return name.replace("&", "_and_")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def store_folder(uri: str, workdir: str | Path | None = None) -> Path | None:
    """The folder a local tracking store lies in: a SQLite file's folder (`sqlite:///PATH`), or the folder holding a
    file store (a folder path or `file:///PATH`); None for a server or a database URL. Relative paths are anchored
    at `workdir` (default: the cwd)."""
    root = Path(workdir or Path.cwd()).resolve()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        if not path or path == ":memory:":
            return None
    elif uri.startswith("file:"):
        path = unquote(urlparse(uri).path)
    elif "://" in uri or not uri.strip():
        return None
    else:
        path = uri
    return (root / Path(path)).resolve().parent  # an absolute path stays itself under `root /`


def resolve_uris(tracking: Any, workdir: str | Path | None = None) -> tuple[str, str]:
    """(tracking URI, artifact location URI) with relative paths anchored at `workdir` (default: the cwd).

    `tracking.artifact_location` left at its default (`mlartifacts`) is the folder `mlartifacts` beside a local store
    (`store_folder`: the SQLite file's folder, or the folder holding a file store), so that moving
    `tracking.tracking_uri` moves the artifacts with it; for a server or a database URL, and for any other relative
    value, it is anchored at `workdir`. With the default `sqlite:///mlruns.db` both are in the working directory.
    """
    root = Path(workdir or Path.cwd()).resolve()
    uri = str(_get(tracking, "tracking_uri", DEFAULT_TRACKING_URI))
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(root / uri[len(prefix) :])
    artifacts = str(_get(tracking, "artifact_location", DEFAULT_ARTIFACTS))
    if "://" not in artifacts:
        path = Path(artifacts)
        anchor = root
        if artifacts == DEFAULT_ARTIFACTS:
            anchor = store_folder(uri, root) or root
        artifacts = (path if path.is_absolute() else anchor / path).resolve().as_uri()
    return uri, artifacts


# What the tracking URI may be (MLflow's own store registries decide; this is what an error message lists).
ACCEPTED_URIS = (
    "sqlite:///PATH, a folder path or file:///PATH, http(s)://HOST[:PORT] (an MLflow server), "
    "databricks[://PROFILE] or a database URL (postgresql://, mysql://, mssql://)"
)
_KNOWN_SCHEMES = {"", *"file sqlite http https databricks databricks-uc uc postgresql mysql mssql".split()}


def _store_registries() -> list[Any]:
    """MLflow's tracking and model-registry store registries (an MlflowClient needs a store from both)."""
    try:
        from mlflow.tracking._model_registry.utils import _get_store_registry
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:  # private modules: another MLflow version may move them
        return []
    return [_tracking_store_registry, _get_store_registry()]


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow cannot open a store at `uri` (None when it can): checked before a run does any work."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.uri import get_uri_scheme

    if not uri.strip():
        return f"an empty URI; expected {ACCEPTED_URIS}"
    scheme = get_uri_scheme(uri)
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        # sqlite://PATH passes MLflow's scheme check but is no file for SQLAlchemy (sqlite:// alone is in memory)
        return "a SQLite URI without a file path; expected sqlite:///PATH (three slashes, then the path)"
    registries = _store_registries()
    if not registries:
        return None if scheme in _KNOWN_SCHEMES else f"scheme {scheme!r} is not supported; expected {ACCEPTED_URIS}"
    for registry in registries:
        try:
            registry.get_store_builder(uri)
        except MlflowException:
            plugins = sorted(
                set(getattr(registry, "_registry", ())) - _KNOWN_SCHEMES
            )  # schemes MLflow plugins installed here add
            extra = f", or a scheme of an installed MLflow plugin: {', '.join(plugins)}" if plugins else ""
            return f"scheme {scheme!r} is not supported; expected {ACCEPTED_URIS}{extra}"
    return None


def _process_start(pid: int) -> str:
    """Start time of process `pid` in clock ticks since boot ("" when unknown): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the command name


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run (host, pid, process start), for `mark_dead_runs`."""
    pid = os.getpid()
    return {"pixelqa.host": socket.gethostname(), "pixelqa.pid": str(pid), "pixelqa.pid_start": _process_start(pid)}


def _alive(pid: int, start: str) -> bool:
    """Whether the process `pid` that started at `start` (`_process_start`; "" unknown) still runs."""
    from pixelqa.files import pid_alive

    return pid_alive(pid) and (not start or _process_start(pid) in ("", start))


def mark_dead_runs(client: Any) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose owner process has exited; returns their run ids."""
    from mlflow.entities import ViewType

    host = socket.gethostname()
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    marked = []
    if not exp_ids:
        return marked
    for run in client.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=50000):
        tags = run.data.tags
        if tags.get("pixelqa.host") != host or not tags.get("pixelqa.pid", "").isdigit():
            continue  # not ours, or on another machine: its process cannot be checked from here
        if _alive(int(tags["pixelqa.pid"]), tags.get("pixelqa.pid_start", "")):
            continue
        client.set_tag(
            run.info.run_id, "pixelqa.end", f"marked KILLED at a later start: pid {tags['pixelqa.pid']} had exited"
        )
        client.set_terminated(run.info.run_id, "KILLED")
        marked.append(run.info.run_id)
    return marked


class _StoreLock:
    """An exclusive file lock beside a SQLite store (a no-op for other stores)."""

    def __init__(self, uri: str) -> None:
        self.path = Path(uri[len("sqlite:///") :] + ".lock") if uri.startswith("sqlite:///") else None
        self.fd: int | None = None

    def __enter__(self) -> _StoreLock:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


_NOTED: set[tuple[str, str, str]] = set()  # (store, experiment, artifacts) whose artifact-location note was printed


def prepare_store(tracking: Any) -> str:
    """Create the store and the tagged experiment if missing, mark dead runs KILLED; returns the experiment id."""
    uri, artifacts = resolve_uris(tracking)
    name = str(_get(tracking, "experiment", "pixelqa"))
    from mlflow import MlflowClient

    with _StoreLock(uri):
        client = MlflowClient(tracking_uri=uri)  # a fresh SQLite store gets its tables here, one process at a time
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name, artifact_location=artifacts)
        if exp is not None and exp.artifact_location != artifacts and (uri, name, artifacts) not in _NOTED:
            _NOTED.add((uri, name, artifacts))  # once per process (a grid's cells open the same store)
            print(
                f"note: experiment {name!r} of {uri} keeps its artifacts in {exp.artifact_location} (set when it was "
                f"created), not {artifacts}; a new tracking.experiment name takes tracking.artifact_location",
                flush=True,
            )
        if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mark_dead_runs(client)
    return exp_id


LIGHTNING_CLASSES = ("PixelQALogger", "ParamsAtSetup")


def _lightning_class(name: str) -> type:
    """`PixelQALogger` or `ParamsAtSetup` (module attributes too), defined on first use: importing Lightning takes
    seconds, which the commands importing this module (pixelqa.grid) should not pay before parsing `--help`."""
    if name not in globals():
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.loggers import MLFlowLogger

        class PixelQALogger(MLFlowLogger):
            """Lightning's MLFlowLogger with MLflow-safe metric names (see `mlflow_key`)."""

            def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
                """Log metrics under MLflow-safe names."""
                super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)

        class ParamsAtSetup(Callback):
            """Logs the params `params()` returns (every rank calls it; rank 0 logs) once the data module is set up,
            when shards built on first use exist; a param the run holds with another value is said in one note
            line."""

            def __init__(self, params: Callable[[], Mapping[str, Any]]) -> None:
                self.params = params

            def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
                """After the data module's setup (Lightning calls it before the callbacks'): log what is new."""
                params = self.params()
                if trainer.is_global_zero and isinstance(trainer.logger, MLFlowLogger):
                    kept = log_new_params(trainer.logger, params)
                    if kept:
                        print(f"note: MLflow params keep the run's first values: {'; '.join(kept)}", flush=True)

        for cls in (PixelQALogger, ParamsAtSetup):
            cls.__qualname__ = cls.__name__  # pickled by reference as pixelqa.tracking.<name>, as before
            globals()[cls.__name__] = cls
    return globals()[name]


def __getattr__(name: str) -> Any:
    """`tracking.PixelQALogger` / `tracking.ParamsAtSetup`: Lightning is imported on first use (`_lightning_class`)."""
    if name in LIGHTNING_CLASSES:
        return _lightning_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_logger(
    tracking: Any,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> MLFlowLogger | None:
    """The run's logger (None when `tracking.enabled` is false); `run_id` continues an existing run."""
    if not _get(tracking, "enabled", True):
        return None
    uri, artifacts = resolve_uris(tracking)
    prepare_store(tracking)
    all_tags = {**(tags or {}), **owner_tags()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    logger = _lightning_class("PixelQALogger")(
        experiment_name=str(_get(tracking, "experiment", "pixelqa")),
        run_name=_get(tracking, "run_name") or run_name,
        tracking_uri=uri,
        artifact_location=artifacts,
        tags=all_tags or None,
        run_id=run_id,
    )
    if run_id is not None:  # a resumed run belongs to this process now, and runs again
        for key, value in owner_tags().items():
            logger.experiment.set_tag(run_id, key, value)
        logger.experiment.update_run(run_id, status="RUNNING")
    return logger


def _client(tracking: Any):
    from mlflow import MlflowClient

    uri, _ = resolve_uris(tracking)
    return MlflowClient(tracking_uri=uri)


def start_parent_run(
    name: str, tracking: Any, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> str:
    """Create a parent run (e.g. one per grid) in the tracking experiment; returns its run id."""
    exp_id = prepare_store(tracking)
    client = _client(tracking)
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    run = client.create_run(exp_id, tags={MLFLOW_RUN_NAME: name, **(tags or {}), **owner_tags()})
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def is_superseded(run: Any) -> bool:
    """Whether an MLflow run was replaced by a later run of the same name (see `supersede_runs`)."""
    return run.data.tags.get(SUPERSEDED_TAG) == "true"


def child_runs(tracking: Any, parent_run_id: str, include_superseded: bool = False) -> list[Any]:
    """The child runs of a parent run (e.g. a grid's cells), without the superseded ones unless asked for."""
    client = _client(tracking)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000)
    return [r for r in runs if include_superseded or not is_superseded(r)]


def supersede_runs(
    tracking: Any, parent_run_id: str, name: str, keep: str | None = None, reason: str = ""
) -> list[str]:
    """Tag superseded the children of `parent_run_id` named `name`, except `keep` (the run replacing them); returns
    the ids newly tagged. A RUNNING one is marked KILLED (its process is gone: the caller replaces it), and with
    `keep`, each superseded run without a successor is pointed at it (idempotent: safe to call at every collect)."""
    client = _client(tracking)
    marked = []
    for run in child_runs(tracking, parent_run_id, include_superseded=True):
        run_id = run.info.run_id
        if run.info.run_name != name or run_id == keep:
            continue
        if not is_superseded(run):
            client.set_tag(run_id, SUPERSEDED_TAG, "true")
            client.set_tag(run_id, SUPERSEDED_REASON_TAG, reason[:5000] or "replaced by a later run of this name")
            if run.info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
            marked.append(run_id)
        if keep is not None and SUPERSEDED_BY_TAG not in run.data.tags:
            client.set_tag(run_id, SUPERSEDED_BY_TAG, keep)
    return marked


def log_parent_artifact(run_id: str, tracking: Any, path: str | Path) -> None:
    """Upload a local file to a run that no logger holds (e.g. a grid's parent run)."""
    _client(tracking).log_artifact(run_id, str(path))


def end_run(run_id: str, tracking: Any, status: str = "FINISHED") -> None:
    """Mark a run (e.g. a grid's parent) as terminated with `status` (FINISHED | FAILED | KILLED)."""
    _client(tracking).set_terminated(run_id, status)


def log_recipe_params(logger: MLFlowLogger | None, flat: Mapping[str, Any]) -> None:
    """Log the flattened resolved recipe as params (keys that change on resume are left out)."""
    if logger is None:
        return
    keep = {k: v for k, v in flat.items() if k.split(".", 1)[0] not in EXCLUDED_PARAMS}
    logger.log_hyperparams(keep)


def log_new_params(logger: MLFlowLogger | None, params: Mapping[str, Any]) -> list[str]:
    """Log the params the run does not hold yet (MLflow forbids changing one); returns `key: held -> given` for
    each it holds with another value (kept: the run's first value stands). A held "None" (an earlier version logged
    shards not built yet) is no difference."""
    if logger is None or not params:
        return []
    held = logger.experiment.get_run(logger.run_id).data.params
    new = {k: v for k, v in params.items() if k not in held}
    if new:
        logger.log_hyperparams(new)
    return [f"{k}: {held[k]!r} -> {str(v)!r}" for k, v in params.items() if held.get(k, "None") not in ("None", str(v))]


def append_tag(logger: MLFlowLogger | None, key: str, value: str, sep: str) -> str:
    """Add `value` to the run's tag `key` after `sep` (set it if absent), the oldest part cut past TAG_LIMIT;
    returns the tag's value."""
    if logger is None:
        return ""
    held = logger.experiment.get_run(logger.run_id).data.tags.get(key)
    text = f"{held}{sep}{value}" if held else value
    if len(text) > TAG_LIMIT:
        text = "..." + text[-(TAG_LIMIT - 3) :]
    logger.experiment.set_tag(logger.run_id, key, text)
    return text


def log_artifact(logger: MLFlowLogger | None, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a local file or folder to the run's artifacts."""
    if logger is None:
        return
    path = Path(path)
    if path.is_dir():
        logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path)
    else:
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def log_text(logger: MLFlowLogger | None, text: str, artifact_file: str) -> None:
    """Store `text` as the artifact `artifact_file` (e.g. `recipe.yaml`)."""
    if logger is None:
        return
    logger.experiment.log_text(logger.run_id, text, artifact_file)


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows (dicts with the same keys) as CSV text."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a GitHub Markdown table; floats with 4 decimals."""
    if not rows:
        return ""
    cols = list(rows[0].keys())

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def log_table(
    logger: MLFlowLogger | None, rows: Sequence[Mapping[str, Any]], name: str, out_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Write `name.csv` and `name.md` (to `out_dir`, else a temp folder) and log both as artifacts."""
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="pixelqa-table-"))
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
    csv_path.write_text(table_csv(rows))
    md_path.write_text(table_markdown(rows))
    for p in (csv_path, md_path):
        log_artifact(logger, p, "tables")
    return csv_path, md_path


def save_run_id(folder: str | Path, run_id: str) -> Path:
    """Store the MLflow run id next to the checkpoints so that a resume continues the same run."""
    path = Path(folder) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return path


def load_run_id(folder: str | Path) -> str | None:
    """The run id stored by `save_run_id` in `folder`, or None."""
    path = Path(folder) / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


def log_checkpoint_paths(logger: MLFlowLogger | None, paths: Mapping[str, str]) -> None:
    """Record where the checkpoints are (they stay on disk; only their paths go to MLflow)."""
    if logger is None:
        return
    logger.experiment.log_text(logger.run_id, json.dumps(dict(paths), indent=2), "checkpoints.json")
    for name, path in paths.items():
        logger.experiment.set_tag(logger.run_id, f"checkpoint.{name}", str(path)[:5000])
