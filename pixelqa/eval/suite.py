"""A suite of benchmarks run through their official protocols (`pixelqa.eval.official`): shards -> requests ->
`answer_fn` -> per-sample records -> the paper's rows, with a provenance record per benchmark.

    load_suite(name) -> Suite                              recipes/suite/<name>.yaml
    benchmark_shards_missing(spec, shards) -> str | None   None, or the one-line reason with the build command
    missing_split(name, source, split, shards) -> str | None   the same for any source split (`pixelqa.evaluate`)
    run_benchmark(spec, answer_fn, shards, out, rank, world) -> int      this rank's samples (resumable)
    finish_benchmark(spec, out, ...) -> BenchmarkResult    merges every rank's records, aggregates, writes result.json
    paper_rows(results, size) -> list[dict]                the paper-style table: ours (%), paper, diff

Resumable: each rank appends one JSON line per scored sample to `<out>/<benchmark>/records.rank<r>.jsonl` (flushed
per line; a torn last line — a write cut short by a full disk or a power loss — is ignored, and cut off before the
rerun appends, so that its sample is scored again), and a rerun skips the keys already there; a finished benchmark
has a `result.json` and is not run again. Both carry a fingerprint of what produced them (`benchmark_fingerprint`: the
run's part from `suite_runner.run_fingerprint` — the SHA-256 of the checkpoint, of the model folder's weight files
and config.json and of the SAM checkpoint, the model settings, the generation route —, the protocol, the shards'
manifests; the result also the sample limit), and are reused only when it matches: otherwise `stale_reason` names
each difference (a changed weight file by name) and the run stops (or, asked to, `set_aside` moves the folder away
and it is scored again). Multi-process: sample i goes to rank i % world (every
sample exactly once); rank 0 merges the files after a barrier and fails when a sample is missing or scored twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelqa.data.schema import Sample
from pixelqa.eval.official import Protocol, as_prediction, get_official
from pixelqa.files import atomic_file
from pixelqa.locks import folder_lock
from pixelqa.resources import ResourceNotFoundError, resource_dir

RESULT_FILE = "result.json"
RECORDS = "records.rank{rank}.jsonl"
LIMIT_KEY = "max_samples"  # the fingerprint key of the sample limit: part of a result's, not of the records'
FRESH_HINT = "score into a new output_dir, or add suite.fresh=true to move the old results aside and score again"


class SuiteError(ValueError):
    """A suite file or a benchmark run that cannot go on; the message names the field or the file."""


@dataclass
class BenchmarkSpec:
    """One row group of the paper: a benchmark's shards (source/split), its protocol and the paper's values."""

    name: str
    source: str
    split: str
    protocol: str
    table: str = ""
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # model size -> metric -> percent


@dataclass
class Suite:
    """A named list of benchmarks."""

    name: str
    benchmarks: list[BenchmarkSpec]


@dataclass
class BenchmarkResult:
    """A finished benchmark: rows, headline metrics (fractions) and the provenance record."""

    name: str
    rows: list[dict]
    metrics: dict[str, float]
    provenance: dict[str, Any]


def suites_dir() -> Path:
    """The folder of suite files, `suite/` of the recipes folder (pixelqa.resources: $PIXELQA_RECIPES,
    $PIXELQA_HOME/recipes, a clone's, else the copies a wheel installs); a SuiteError when there is none."""
    try:
        return resource_dir("recipes") / "suite"
    except ResourceNotFoundError as err:
        raise SuiteError(f"suite: {err}") from None


def load_suite(name_or_path: str) -> Suite:
    """A suite from recipes/suite/<name>.yaml (or a path), every field checked."""
    path = Path(name_or_path).expanduser()
    if not path.suffix:
        path = suites_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        folder = suites_dir()
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SuiteError(f"suite: got {name_or_path!r}, expected one of {known} (in {folder}) or a suite YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    items = data.get("benchmarks")
    if not isinstance(items, list) or not items:
        raise SuiteError(f"{path}: 'benchmarks' must be a non-empty list")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SuiteError(f"{path}: benchmarks[{i}]: got {item!r}, expected a mapping")
        unknown = set(item) - {f for f in BenchmarkSpec.__dataclass_fields__}
        if unknown:
            raise SuiteError(f"{path}: benchmarks[{i}]: unknown keys {sorted(unknown)}")
        for key in ("name", "source", "split", "protocol"):
            if not isinstance(item.get(key), str):
                raise SuiteError(f"{path}: benchmarks[{i}].{key}: got {item.get(key)!r}, expected a string")
        get_official(item["protocol"])  # raises on an unknown protocol
        specs.append(BenchmarkSpec(**item))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: benchmark names must be unique, got {names}")
    return Suite(str(data.get("name", path.stem)), specs)


# ------------------------------------------------------------------------------------------------ shards


def shard_files(shards: str | Path, source: str, split: str) -> list[Path]:
    """The tar files of one source split (sorted), empty when the folder is missing or its build has not finished
    (no manifest, or a progress file: the first shards of a stopped build are not the benchmark)."""
    from pixelqa.data.shards import unfinished_build

    folder = Path(shards) / source / split
    if not folder.is_dir() or unfinished_build(folder) is not None:
        return []
    return sorted(folder.glob("*.tar"))


def build_command(source: str, split: str, shards: str | Path) -> str:
    """The command that builds a source split's shards."""
    return f"python -m pixelqa.data build {source} --root RAW/{source} --out {shards} --split {split}"


def missing_split(name: str, source: str, split: str, shards: str | Path) -> str | None:
    """None when `source`/`split` has finished shards under `shards`; else one line, starting with `name`, that names
    the folder and the command that builds (or finishes building) them. Shared by the suite and `pixelqa.evaluate`."""
    from pixelqa.data.shards import unfinished_build

    if shard_files(shards, source, split):
        return None
    folder = Path(shards) / source / split
    unfinished = unfinished_build(folder, shards) if any(folder.glob("*.tar")) else None
    if unfinished is not None:
        return (
            f"{name}: the shards in {folder} are {unfinished.state} ({unfinished.reason}); {unfinished.action}: "
            f"{unfinished.command}"
        )
    return f"{name}: no shards at {folder}; build them with: {build_command(source, split, shards)}"


def benchmark_shards_missing(spec: BenchmarkSpec, shards: str | Path) -> str | None:
    """None when the benchmark's shards exist; else the one-line skip reason naming the build command."""
    return missing_split(spec.name, spec.source, spec.split, shards)


def manifest_checksums(shards: str | Path, source: str, split: str) -> dict[str, str]:
    """SHA-256 of every manifest file of a source split (the provenance of the data scored)."""
    folder = Path(shards) / source / split
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("manifest*.json"))}


def iter_benchmark_samples(spec: BenchmarkSpec, shards: str | Path, damage: Any = None) -> Iterator[Sample]:
    """The benchmark's samples in shard order (damaged records are skipped and counted by `damage`)."""
    from pixelqa.data.shard_reader import DamageLog, iter_samples

    files = shard_files(shards, spec.source, spec.split)
    if not files:
        raise FileNotFoundError(benchmark_shards_missing(spec, shards))
    yield from iter_samples(files, damage if damage is not None else DamageLog())


# ------------------------------------------------------------------------------------------------ records


def _parsed(line: str) -> Any:
    """A line's JSON value; None when it is not JSON (a torn or damaged line)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def read_records_file(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """(fingerprint header or None, key -> record) of one JSON-lines file; a torn last line (a write cut short) is
    ignored. A damaged line before the last raises SuiteError naming each such line and how to drop just them; so
    does a sample on two lines (two runs appended to the file at once: which line is whose cannot be told)."""
    header: dict | None = None
    out: dict[str, dict] = {}
    if not path.is_file():
        return header, out
    lines = path.read_text().splitlines()
    bad: list[int] = []
    line_of: dict[str, int] = {}
    twice: list[str] = []
    for i, line in enumerate(lines):
        rec = _parsed(line)
        if i == 0 and isinstance(rec, dict) and "fingerprint" in rec and "key" not in rec:
            header = rec["fingerprint"]
            continue
        if isinstance(rec, dict) and "key" in rec and "index" in rec:
            if rec["key"] in line_of:
                twice.append(f"{rec['key']!r} on lines {line_of[rec['key']]} and {i + 1}")
            line_of.setdefault(rec["key"], i + 1)
            out[rec["key"]] = rec
        elif not (rec is None and i == len(lines) - 1):  # not JSON on the last line: torn, scored again
            bad.append(i + 1)
    if bad:
        # a version before run_benchmark cut torn lines appended the next record to one: only the samples on the
        # damaged lines need scoring again, not the whole file
        lines_named = ", ".join(map(str, bad))
        raise SuiteError(
            f"{path}: line{'s' * (len(bad) > 1)} {lines_named} {'are' if len(bad) > 1 else 'is'} not a JSON record "
            "(a write cut short, then appended to); delete only those lines and rerun to score their samples again: "
            f"sed -i '{';'.join(f'{n}d' for n in bad)}' {path}"
        )
    if twice:
        more = f" (and {len(twice) - 1} more)" if len(twice) > 1 else ""
        raise SuiteError(
            f"{path}: sample {twice[0]}{more}: two runs appended to this file at once, so its records cannot be "
            f"trusted; {FRESH_HINT}"
        )
    return header, out


def cut_torn_tail(path: Path) -> int:
    """Cut a records file back to the end of its last complete line; returns the bytes removed. A last line that is
    a whole record missing only its newline gets the newline instead."""
    with path.open("r+b") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        end = data.rfind(b"\n") + 1
        if isinstance(_parsed(data[end:].decode("utf-8", "replace")), dict):
            f.write(b"\n")  # at the end already: the next record starts on its own line
            return 0
        f.truncate(end)  # appended to, the fragment would glue itself to the next record: a damaged middle line
        return len(data) - end


def read_records(path: Path) -> dict[str, dict]:
    """key -> record of one JSON-lines file (the fingerprint header left out); a torn last line is ignored."""
    return read_records_file(path)[1]


# ------------------------------------------------------------------------------------------------ fingerprints


def benchmark_fingerprint(
    spec: BenchmarkSpec, shards: str | Path, run: dict[str, Any] | None = None, limit: int | None = None
) -> dict[str, Any]:
    """What determines a benchmark's numbers: the run's part (checkpoint, model settings, ...), the protocol, the
    shards' manifest checksums and the sample limit."""
    return {
        **(run or {}),
        "source": spec.source,
        "split": spec.split,
        "protocol": spec.protocol,
        "shard_manifests": manifest_checksums(shards, spec.source, spec.split),
        LIMIT_KEY: limit,
    }


def records_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The part of a fingerprint that per-sample records depend on: a sample scored under a smaller limit is the
    same record, so a run with a larger one resumes them."""
    return {k: v for k, v in fingerprint.items() if k != LIMIT_KEY}


def _shown(value: Any) -> str:
    """A fingerprint value for a message: hashes and mappings shortened to 12 hex digits."""
    if isinstance(value, dict):
        return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return repr(value)


def _side(mapping: dict[str, Any], key: str, missing: str) -> str:
    """One side of a difference: the shown value, or `missing` when the key is not there."""
    return _shown(mapping[key]) if key in mapping else missing


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose value differs, in the old order then the new (a key one side lacks counts as None there)."""
    return [k for k in [*old, *(k for k in new if k not in old)] if old.get(k) != new.get(k)]


def fingerprint_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """None when `old` equals `new`; else what differs, as `key: old then, new now` (a mapping on both sides, e.g.
    a model folder's file hashes, per entry as `key[entry]`), or that nothing was recorded."""
    if old is None:
        return "no fingerprint recorded (written before fingerprints were kept)"
    # JSON round trip: tuples and lists, int and float keys compare as stored
    new = json.loads(json.dumps(_json_safe(new)))
    parts = []
    for k in _changed(old, new):
        before, after = old.get(k), new.get(k)
        if isinstance(before, dict) and isinstance(after, dict):
            # which file of a folder changed, not a hash of the whole mapping
            parts += [
                f"{k}[{e}]: {_side(before, e, 'absent')} then, {_side(after, e, 'absent')} now"
                for e in _changed(before, after)
            ]
        else:  # a key one side lacks: a setting an older (or newer) version did not record
            parts.append(f"{k}: {_side(old, k, 'not recorded')} then, {_side(new, k, 'not recorded')} now")
    return "; ".join(parts) or None


def read_result(folder: Path) -> dict | None:
    """The stored result.json of a benchmark folder, or None; a damaged file is a SuiteError naming it (its records
    are kept: deleting it merges them again)."""
    done = folder / RESULT_FILE
    if not done.is_file():
        return None
    try:
        data = json.loads(done.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError("expected a JSON object with 'rows', 'metrics' and 'provenance'")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SuiteError(
            f"{done}: damaged ({err}); delete it and rerun: the records beside it are merged again"
        ) from None


def is_final(data: dict | None) -> bool:
    """Whether a stored result is final: one that left out damaged records is scored again on every rerun (the
    records resume, so only what now reads is scored), so that repaired shards are never left unscored."""
    return data is not None and not (data.get("provenance") or {}).get("damaged_records")


def finished(folder: Path) -> bool:
    """Whether the benchmark folder holds a final result.json (`is_final`)."""
    return is_final(read_result(folder))


def stale_reason(spec: BenchmarkSpec, out: str | Path, fingerprint: dict[str, Any]) -> str | None:
    """None when the benchmark's result and records under `out` (if any) were produced under `fingerprint`; else
    the one-line reason naming the folder, what differs and how to go on."""
    folder = Path(out) / spec.name
    data = read_result(folder)
    if data is not None:
        stored = (data.get("provenance") or {}).get("fingerprint")
        diff = fingerprint_diff(stored, fingerprint)
        if diff:
            return f"{folder}: {RESULT_FILE} was not produced with these settings ({diff}); {FRESH_HINT}"
        if is_final(data):
            return None  # a matching result is reused; its records are not read again
    for path in sorted(folder.glob("records.rank*.jsonl")):
        header, records = read_records_file(path)
        # a file with no records (only a header, or a kill before the first line) holds nothing to reuse
        diff = fingerprint_diff(header, records_fingerprint(fingerprint)) if records else None
        if diff:
            return f"{folder}: {path.name} was not scored with these settings ({diff}); {FRESH_HINT}"
    return None


def set_aside(folder: str | Path) -> Path:
    """Rename a benchmark folder to `<folder>.stale-<n>` (the first free n) so it is kept but not reused."""
    folder = Path(folder)
    n = 1
    while folder.with_name(f"{folder.name}.stale-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.stale-{n}")
    os.replace(folder, target)
    return target


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the JSON lines stay standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _prepare(protocol: Protocol, spec: BenchmarkSpec, out: Path) -> None:
    """Per-run setup of protocols that write files (submissions)."""
    if hasattr(protocol, "writer"):
        from pixelqa.eval.submission import SubmissionWriter

        protocol.writer = SubmissionWriter(protocol.name, out / "submission")


def run_benchmark(
    spec: BenchmarkSpec,
    answer_fn: Callable[[Any], Any],
    shards: str | Path,
    out: str | Path,
    rank: int = 0,
    world: int = 1,
    limit: int | None = None,
    fingerprint: dict[str, Any] | None = None,
    strict: bool = False,
) -> int:
    """Score this rank's share (sample i where i % world == rank) of the first `limit` samples; returns how many
    this call scored (samples already in the rank's records file are skipped). `fingerprint` is the run's part of
    `benchmark_fingerprint`; stored results or records made under another one raise SuiteError, and so does another
    process writing the rank's records file now (the file's lock). Damaged records are skipped and counted (`strict`:
    the first is a SuiteError); a sample its protocol cannot read is a SuiteError naming it."""
    fp = benchmark_fingerprint(spec, shards, fingerprint, limit)
    reason = stale_reason(spec, out, fp)
    if reason:
        raise SuiteError(reason)
    root, out = Path(out), Path(out) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    if finished(out):
        return 0
    protocol = get_official(spec.protocol)
    path = out / RECORDS.format(rank=rank)
    # One writer per records file: another process appending to it while this one rewrites its header (or appends
    # too) would leave one file of two runs' records under one fingerprint.
    advice = "wait for it to finish, or score into another output_dir"
    with folder_lock(out, f"records-rank{rank}", advice, error=SuiteError):
        reason = stale_reason(spec, root, fp)  # again, under the lock: the first look may have seen a file mid-change
        if reason:
            raise SuiteError(reason)
        if finished(out):
            return 0
        _prepare(protocol, spec, out)
        header, done = read_records_file(path)
        if not done:  # nothing scored yet (new file, a header only, a torn first line): start it with this header
            path.write_text(json.dumps(_json_safe({"fingerprint": records_fingerprint(fp)})) + "\n")
        else:
            cut_torn_tail(path)  # the torn record's sample is not in `done`: it is scored again below
        scored = 0
        with path.open("a") as f, _damage_is_suite_error(spec, strict) as damage:
            for i, sample in enumerate(iter_benchmark_samples(spec, shards, damage)):
                if limit is not None and i >= limit:
                    break
                if i % world != rank or sample.key in done:
                    continue
                with _sample_errors(spec, sample):
                    request = protocol.request(sample)
                pred = as_prediction(answer_fn(request))
                with _sample_errors(spec, sample, scoring=True):
                    record = protocol.score(sample, request, pred)
                line = {"key": sample.key, "index": i, "text": pred.text, **record}
                f.write(json.dumps(_json_safe(line)) + "\n")
                f.flush()
                scored += 1
    return scored


@contextmanager
def _damage_is_suite_error(spec: BenchmarkSpec, strict: bool) -> Iterator[Any]:
    """A DamageLog for reading the benchmark's shards; in strict mode the first damage is a SuiteError (one line)."""
    from pixelqa.data.shard_reader import DamageLog, ShardDamageError

    try:
        yield DamageLog(strict)
    except ShardDamageError as err:
        raise SuiteError(
            f"{spec.name}: {err}; rebuild the shards, or drop --strict to score the intact samples"
        ) from None


@contextmanager
def _sample_errors(spec: BenchmarkSpec, sample: Sample, scoring: bool = False) -> Iterator[None]:
    """A sample its protocol cannot read (a field missing or malformed: damaged or foreign shards) is a SuiteError
    naming the benchmark and the sample, not a traceback; while scoring, the prediction may be the cause too."""
    try:
        yield
    except (KeyError, ValueError) as err:
        detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
        advice = "rebuild the shards with this version's converter"
        if scoring:  # e.g. official.check_mask: masks of another shape than the sample's frames
            advice = f"check the prediction (its masks must match the sample's frames), or {advice}"
        raise SuiteError(
            f"{spec.name} ({spec.source}/{spec.split}): sample {sample.key!r} cannot be scored by protocol "
            f"{spec.protocol}: {detail}; {advice}"
        ) from None


def merge_records(
    out: str | Path, expected: int | None = None, fingerprint: dict[str, Any] | None = None, limit: int | None = None
) -> list[dict]:
    """Every rank's records of one benchmark folder (those of the first `limit` samples), in sample order; a key
    scored twice, a gap, or a file whose header differs from the records `fingerprint` (when given) is an error."""
    out = Path(out)
    merged: dict[str, dict] = {}
    for path in sorted(out.glob("records.rank*.jsonl")):
        header, records = read_records_file(path)
        diff = fingerprint_diff(header, fingerprint) if fingerprint is not None and records else None
        if diff:
            raise SuiteError(f"{out}: {path.name} was not scored with these settings ({diff}); {FRESH_HINT}")
        for key, rec in records.items():
            if limit is not None and rec["index"] >= limit:
                continue  # scored by an earlier run with a larger limit: not part of this result
            if key in merged:
                raise SuiteError(f"{out}: sample {key!r} was scored by two ranks; expected each sample once")
            merged[key] = rec
    records = sorted(merged.values(), key=lambda r: r["index"])
    if expected is not None and len(records) != expected:
        raise SuiteError(f"{out}: {len(records)} samples scored, expected {expected}; rerun to score the rest")
    return records


def _headline(protocol: Protocol, rows: Sequence[dict]) -> dict[str, float]:
    """The headline metrics: the protocol's keys of the last row, when numeric."""
    last = rows[-1] if rows else {}
    return {k: float(last[k]) for k in protocol.headline if isinstance(last.get(k), (int, float))}


def finish_benchmark(
    spec: BenchmarkSpec,
    shards: str | Path,
    out: str | Path,
    provenance: dict[str, Any] | None = None,
    limit: int | None = None,
    fingerprint: dict[str, Any] | None = None,
    strict: bool = False,
) -> BenchmarkResult:
    """Merge the ranks' records, aggregate them into rows and write result.json (atomically, with its fingerprint,
    the samples scored and expected and the damaged records left out); a final stored result is returned as it is
    when its fingerprint matches (else SuiteError). No intact sample to score is a SuiteError, not an empty result."""
    folder = Path(out) / spec.name
    done = folder / RESULT_FILE
    fp = benchmark_fingerprint(spec, shards, fingerprint, limit)
    reason = stale_reason(spec, out, fp)
    if reason:
        raise SuiteError(reason)
    data = read_result(folder)
    if is_final(data):
        return BenchmarkResult(spec.name, data["rows"], data["metrics"], data["provenance"])
    with _quiet_damage(), _damage_is_suite_error(spec, strict) as damage:  # run_benchmark has warned of each
        intact = sum(1 for _ in iter_benchmark_samples(spec, shards, damage))
    total = benchmark_expected(spec, shards)
    total = intact + damage.count if total is None else max(total, intact)
    expected, total = (min(intact, limit), min(total, limit)) if limit is not None else (intact, total)
    if expected == 0:
        raise SuiteError(
            f"{spec.name}: no intact sample to score in {Path(shards) / spec.source / spec.split} ({damage.count} "
            "damaged records); rebuild the shards (python -m pixelqa.data build ...)"
        )
    records = merge_records(folder, expected, records_fingerprint(fp), limit)
    protocol = get_official(spec.protocol)
    rows = protocol.aggregate(records)
    if spec.protocol in ("mevis_server", "ref_youtube_vos"):
        from pixelqa.eval.submission import SubmissionWriter

        zip_path = SubmissionWriter(protocol.name, folder / "submission").finish(folder / f"{spec.name}_submission.zip")
        rows[-1]["submission"] = str(zip_path)
    if spec.protocol == "videorefer_bench_d":
        judge_input = folder / "judge_input.json"
        _write_json(judge_input, [{k: r[k] for k in ("video", "index", "caption", "pred")} for r in records])
        rows[-1]["judge_input"] = str(judge_input)
    record = {
        **(provenance or {}),
        **protocol.describe(),
        "benchmark": spec.name,
        "protocol": spec.protocol,
        "source": spec.source,
        "split": spec.split,
        "samples": len(records),
        "samples_expected": total,
        "damaged_records": damage.count,
        "shard_manifests": fp["shard_manifests"],
        "fingerprint": fp,
    }
    result = BenchmarkResult(spec.name, rows, _headline(protocol, rows), record)
    _write_json(done, _json_safe(asdict(result)))
    return result


@contextmanager
def _quiet_damage() -> Iterator[None]:
    """Shard damage warnings off for a second read of the same shards (each was printed by the first)."""
    import logging

    logger = logging.getLogger("pixelqa.data.shard_reader")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary of a unique name + rename: two writers never rename each other's)."""
    text = json.dumps(data, indent=1)
    atomic_file(path, lambda tmp: tmp.write_text(text))


# ------------------------------------------------------------------------------------------------ tables


def percent(value: float | None) -> float | None:
    """A fraction as a percentage with one decimal (None stays None)."""
    return None if value is None or not math.isfinite(value) else round(100.0 * value, 1)


# headline metrics that count things (server-scored splits report expressions written, VideoRefer-Bench-D the
# samples sent to the judge): shown as counts, never as a percentage, and with no paper value to compare
COUNT_METRICS = frozenset({"samples", "expressions", "objects", "no_seg"})
SAMPLES_COLUMN = "scored / expected"


def benchmark_expected(spec: BenchmarkSpec, shards: str | Path | None) -> int | None:
    """Samples the benchmark's shards hold (damaged records included, from their indexes / manifests); None when
    they cannot be read here."""
    from pixelqa.data.shard_reader import open_shard

    if shards is None:
        return None
    try:
        files = shard_files(shards, spec.source, spec.split)
        if not files:
            return None
        total = 0
        for f in files:
            contents = open_shard(str(f))
            lost = sum(d.records for d in contents.damage)
            total += contents.expected if contents.expected is not None else len(contents.refs) + lost
        return total
    except (OSError, ValueError):
        return None


def sample_coverage(
    spec: BenchmarkSpec, result: BenchmarkResult, shards: str | Path | None = None
) -> tuple[int | None, int | None, bool]:
    """(scored, expected, subset) of a finished benchmark: samples in its result, samples of the benchmark (its
    shards, `shards` or the recipe's `data.shards`; with no limit and unreadable shards, the scored ones), and
    whether the result covers fewer (an `eval.max_samples` limit or damaged records) or may (a limit reached, the
    total unknown)."""
    prov = result.provenance or {}
    scored = prov.get("samples")
    scored = int(scored) if scored is not None else None
    limit = (prov.get("fingerprint") or {}).get(LIMIT_KEY)
    if shards is None:
        shards = (prov.get("recipe") or {}).get("data.shards")
    expected = benchmark_expected(spec, shards)
    if expected is None and limit is None:
        expected = scored  # every sample the shards hold was scored (merge_records checks the count)
    if scored is None:
        return None, expected, limit is not None
    if expected is None:  # a limit, total unknown: reached means the benchmark may hold more
        return scored, None, scored >= int(limit)
    return scored, expected, scored < expected


def paper_rows(
    specs: Sequence[BenchmarkSpec],
    results: dict[str, BenchmarkResult],
    size: str | None,
    shards: str | Path | None = None,
) -> list[dict]:
    """The paper-style table: one row per (benchmark, metric) with ours (a fraction as %, a count as it is), the
    paper's value, the difference, the unit and the samples scored / expected. A result on a subset (an
    `eval.max_samples` limit, damaged records) gets no difference: it is not the paper's number."""
    rows = []
    for spec in specs:
        result = results.get(spec.name)
        if result is None:
            continue
        published = spec.paper.get(size or "", {})
        scored, expected, subset = sample_coverage(spec, result, shards)
        coverage = f"{'?' if scored is None else scored} / {'?' if expected is None else expected}"
        if subset:
            coverage += " (subset: no diff)"
        cap = (result.provenance or {}).get("max_new_tokens_cap")
        if cap is not None:  # answers cut at a debugging cap are not the official protocol's
            coverage += f" (answers capped at {cap} tokens: no diff)"
            subset = True
        for metric, value in result.metrics.items():
            count = metric in COUNT_METRICS
            ours = (int(value) if math.isfinite(value) else None) if count else percent(value)
            paper = None if count else published.get(metric)
            diff = round(ours - paper, 1) if ours is not None and paper is not None and not subset else None
            rows.append(
                {
                    "table": spec.table,
                    "benchmark": spec.name,
                    "split": spec.split,
                    "metric": metric,
                    "ours": ours,
                    "paper": paper,
                    "diff": diff,
                    "unit": "count" if count else "%",
                    SAMPLES_COLUMN: coverage,
                }
            )
    return rows


def rows_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table; numbers as the paper prints them (one decimal), missing values as '-'."""
    if not rows:
        return ""
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[dict]) -> str:
    """CSV of the rows (missing values empty)."""
    import csv
    import io

    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return buf.getvalue()
