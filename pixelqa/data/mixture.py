"""Data mixtures: which sources a stage trains on and with which repeat factor (paper Table 12).

A mixture is ``recipes/data/<name>.yaml`` with ``sources: [{name, split, repeat}]``. When no such file
exists, the mixture of a stage (``stage1``, ``stage2``, ``stage3``; ``sft1m`` = stage 3) is assembled from
the cards in ``datasets/`` that say ``paper: true`` (the paper's Table 12 sources, `PAPER_SAMPLES`): a card without
it (the demo's `synthetic`, a source of your own) never joins a paper mixture, whatever its `stages` say; train on
it through a mixture file of your own (docs/extending.md). A source's share
of training samples is repeat x samples / sum over sources. With built shards, each source's count is its
manifests' and the table sets it beside the expected one (card, else paper), flagging sources that are missing
or short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from pixelqa.data.catalog import list_sources
from pixelqa.data.registry import Card, list_cards, load_card
from pixelqa.resources import resource_dir

STAGE_ALIASES = {"sft1m": "stage3", "stage1-mix": "stage1", "stage2-mix": "stage2"}

# Paper Table 12 sample counts (thousands -> samples), used only to print expected shares when neither a
# manifest nor a card gives a count. Keys are the converter names.
PAPER_SAMPLES: dict[str, int] = {
    "osprey_conversation": 1_400,
    "osprey_detail_description": 29_000,
    "osprey_pos_neg": 20_000,
    "videorefer_detailed_caption": 120_000,
    "videorefer_qa": 69_000,
    "instit_video_qa": 159_000,
    "videorefer_qa_memory": 69_000,
    "instit_qa_memory": 158_000,
    "refcoco": 17_000,
    "refcoco_plus": 17_000,
    "refcocog": 22_000,
    "refclef": 18_000,
    "reasonseg": 1_600,
    "ade20k": 20_000,
    "cocostuff": 118_000,
    "mapillary": 18_000,
    "paco_lvis": 46_000,
    "pascal_part": 4_400,
    "ref_youtube_vos": 13_000,
    "ref_davis17": 600,
    "ref_sav": 56_000,
    "mevis": 23_000,
    "lvvis": 11_000,
    "vicas": 41_000,
    "revos": 29_000,
    "groundmore": 5_600,
    "llava_mix665k": 647_000,
    "videogpt_plus": 573_000,
    "instit_image_short_caption": 351_000,
    "videorefer_short_caption": 500_000,
}


# A built source below this fraction of its expected count is flagged "short". Not 1.0: the paper's counts are
# rounded (69K, 1.4K) and the reference filters leave a few percent out.
SHORT_FRACTION = 0.95

# What a count printed for a source leaves out, shown under the table.
COUNT_NOTES: dict[str, str] = {
    "llava_mix665k": "image records only: the ~40K text-only records (kept by the release as type 'text') are not "
    "converted (docs/departures.md)",
}


class MixtureError(ValueError):
    """A mixture that cannot be used: a bad recipe, an unregistered source or missing raw data (named)."""


@dataclass
class MixtureEntry:
    """One source of a mixture."""

    name: str
    split: str = "train"
    repeat: float = 1.0


def recipes_dir() -> Path:
    """The `data/` folder of the recipes (the data mixtures): $PIXELQA_RECIPES/data, $PIXELQA_HOME/recipes/data, a
    clone's, else the copies a wheel installs (pixelqa.resources; a FileNotFoundError when there is none)."""
    return resource_dir("recipes") / "data"


def parse_mixture(data: dict, where: str = "mixture") -> list[MixtureEntry]:
    """Validate ``{sources: [{name, split, repeat}, ...]}`` and return its entries."""
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list) or not data["sources"]:
        raise MixtureError(f"{where}: expected a mapping with a non-empty 'sources' list of {{name, split, repeat}}")
    entries = []
    for i, s in enumerate(data["sources"]):
        if not isinstance(s, dict) or "name" not in s:
            raise MixtureError(f"{where}.sources[{i}]: got {s!r}, expected {{name, split, repeat}}")
        unknown = set(s) - {"name", "split", "repeat"}
        if unknown:
            raise MixtureError(f"{where}.sources[{i}]: unknown keys {sorted(unknown)}, expected name, split, repeat")
        repeat = s.get("repeat", 1)
        if not isinstance(repeat, (int, float)) or isinstance(repeat, bool) or repeat <= 0:
            raise MixtureError(f"{where}.sources[{i}].repeat: got {repeat!r}, expected a positive number")
        entries.append(MixtureEntry(str(s["name"]), str(s.get("split", "train")), float(repeat)))
    return entries


def load_mixture(name: str) -> list[MixtureEntry]:
    """The mixture `name`: recipes/data/<name>.yaml if it exists, else the stage's repeat factors in the cards."""
    path = Path(name).expanduser() if name.endswith((".yaml", ".yml")) else recipes_dir() / f"{name}.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise MixtureError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        return parse_mixture(data, where=str(path))
    stage = STAGE_ALIASES.get(name, name)
    entries = [
        MixtureEntry(card.name, use.split, float(use.repeat))
        for card in paper_cards()
        for st, use in card.stages.items()
        if st == stage
    ]
    if not entries:
        raise MixtureError(f"mixture: got {name!r}; no {path} and no card uses stage {stage!r}")
    return entries


def paper_cards() -> list[Card]:
    """The cards marked `paper: true`, whose stages make up the paper's stage mixtures; a MixtureError names a card
    that says so for a source outside paper Table 12 (a card copied from a paper source keeps the flag)."""
    cards = [card for card in (load_card(c) for c in list_cards()) if card.paper]
    for card in cards:
        if card.name not in PAPER_SAMPLES:
            raise MixtureError(
                f"{card.path}: paper: true, but {card.name!r} is not a source of paper Table 12 (mixture.PAPER_SAMPLES)"
                "; remove `paper: true` (its stages then join no paper mixture) and list the source in a mixture of "
                "your own, recipes/data/<name>.yaml (docs/extending.md)"
            )
    return cards


def manifest_samples(path: Path) -> int:
    """The `num_samples` of a shard manifest; one that cannot be read is a MixtureError naming the file."""
    expected = "expected a JSON object with an integer num_samples >= 0 (rebuild that source's shards)"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())
        raise MixtureError(f"{path}: corrupt shard manifest ({reason}); {expected}") from None
    count = manifest.get("num_samples") if isinstance(manifest, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        got = f"num_samples={count!r}" if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        raise MixtureError(f"{path}: corrupt shard manifest (got {got}); {expected}")
    return count


def expected_samples(entry: MixtureEntry) -> tuple[int | None, str]:
    """(expected sample count, where it came from): the card, else the paper table."""
    if entry.name in list_cards():
        n = load_card(entry.name).samples.get(entry.split)
        if n is not None:
            return n, "card"
    if entry.name in PAPER_SAMPLES:
        return PAPER_SAMPLES[entry.name], "paper"
    return None, "unknown"


def built_samples(entry: MixtureEntry, shards_root: str | Path) -> int | None:
    """The samples of a source's manifests under shards_root (None when none is there)."""
    manifests = sorted((Path(shards_root) / entry.name / entry.split).glob("manifest*.json"))
    return sum(manifest_samples(m) for m in manifests) if manifests else None


def source_samples(entry: MixtureEntry, shards_root: str | Path | None = None) -> tuple[int | None, str]:
    """(sample count, where it came from): manifests under shards_root, else the card, else the paper table."""
    if shards_root is not None:
        n = built_samples(entry, shards_root)
        if n is not None:
            return n, "manifest"
    return expected_samples(entry)


def build_status(built: int | None, expected: int | None) -> str:
    """'missing' (no manifest), 'short' (under SHORT_FRACTION of the expected count) or 'ok'."""
    if built is None:
        return "missing"
    return "short" if expected is not None and built < SHORT_FRACTION * expected else "ok"


def mixture_table(entries: list[MixtureEntry], shards_root: str | Path | None = None) -> list[dict]:
    """Rows name, split, repeat, samples, origin, effective (= repeat x samples), share, registered, expected,
    expected_origin; with shards_root also built (the manifests' count, None if missing), status (`build_status`, or
    "lost" when a shard the manifests list is not there) and lost (those shards, in words)."""
    known = set(list_sources())
    rows = []
    for e in entries:
        expected, expected_origin = expected_samples(e)
        built = built_samples(e, shards_root) if shards_root is not None else None
        n, origin = (built, "manifest") if built is not None else (expected, expected_origin)
        row = {
            "name": e.name,
            "split": e.split,
            "repeat": e.repeat,
            "samples": n,
            "origin": origin,
            "effective": e.repeat * n if n is not None else None,
            "registered": e.name in known,
            "expected": expected,
            "expected_origin": expected_origin,
        }
        if shards_root is not None:
            from pixelqa.data.shards import missing_shards, shard_dir

            row["built"] = built
            row["status"] = build_status(built, expected)
            folder = shard_dir(Path(shards_root), e.name, e.split)
            row["lost"] = [str(m) for m in missing_shards(folder)] if built is not None else []  # JSON: the spec
            if row["lost"]:  # the manifests count samples whose shard files are gone: not "ok", whatever the count
                row["status"] = "lost"
        rows.append(row)
    total = sum(r["effective"] for r in rows if r["effective"] is not None)
    for r in rows:
        r["share"] = r["effective"] / total if r["effective"] is not None and total else None
    return rows


def print_mixture(entries: list[MixtureEntry], shards_root: str | Path | None = None) -> None:
    """Print the mixture as a table with each source's share of training samples; with shards_root, each source's
    built count beside the expected one, flagged 'missing' or 'short'."""
    rows = mixture_table(entries, shards_root)
    built = shards_root is not None
    extra = f" {'expected':>9s} {'status':10s}" if built else ""
    head = f"{'source':32s} {'split':8s} {'repeat':>6s} {'samples':>9s} {'from':8s} {'effective':>10s} {'share':>6s}"
    print((head + extra).rstrip())
    for r in rows:
        n = f"{r['samples']:,}" if r["samples"] is not None else "?"
        eff = f"{r['effective']:,.0f}" if r["effective"] is not None else "?"
        share = f"{100 * r['share']:5.1f}%" if r["share"] is not None else "?"
        flag = "" if r["registered"] else "  (no converter registered under this name)"
        if built:
            exp = f"{r['expected']:,}" if r["expected"] is not None else "?"
            status = r["status"]
            if r["built"] is not None and r["expected"]:
                status += f" {100 * r['built'] / r['expected']:.0f}%"
            extra = f" {exp:>9s} {status:10s}"
        line = f"{r['name']:32s} {r['split']:8s} {r['repeat']:6g} {n:>9s} {r['origin']:8s} {eff:>10s} {share:>6s}"
        print((line + extra).rstrip() + flag)
    total = sum(r["effective"] for r in rows if r["effective"] is not None)
    print(f"total effective samples per epoch: {total:,.0f}")
    if built:
        missing = [r["name"] for r in rows if r["status"] == "missing"]
        short = [r["name"] for r in rows if r["status"] == "short"]
        if missing:
            print(f"missing (no shards under {shards_root}; counted at the expected size): {', '.join(missing)}")
        if short:
            print(f"short (built < {SHORT_FRACTION:.0%} of the expected count): {', '.join(short)}")
        for r in rows:
            for lost in r["lost"]:
                print(f"lost ({r['name']}/{r['split']}): {lost}; the count above includes it")
    for r in rows:
        if r["name"] in COUNT_NOTES:
            print(f"note: {r['name']}: {COUNT_NOTES[r['name']]}")


def parse_roots(items: list[str]) -> dict[str, str]:
    """`--roots NAME=PATH ...` as {name: path}; a malformed item is a MixtureError naming it."""
    roots = {}
    for item in items or []:
        if "=" not in item:
            raise MixtureError(f"--roots: got {item!r}, expected NAME=PATH")
        name, path = item.split("=", 1)
        roots[name] = path
    return roots


def source_root(raw_root: str | Path, name: str, roots: dict[str, str] | None = None) -> Path:
    """Where a source's raw files live: an explicit `roots[name]`, else `<raw_root>/<name>`."""
    if roots and name in roots:
        return Path(roots[name])
    return Path(raw_root) / name


def build_mixture(
    entries: list[MixtureEntry],
    raw_root: str | Path,
    out: str | Path,
    roots: dict[str, str] | None = None,
    workers: int = 1,
    on_error: str = "fail",
    node_rank: int = 0,
    num_nodes: int = 1,
    max_samples: int | None = None,
    progress: bool = True,
    frame_codec: str = "keep",
) -> dict[str, dict]:
    """Build (or resume) the shards of every source of a mixture; returns `name/split` -> manifest.

    frame_codec: as `build_shards` (keep: the frames as released; ppm: decoded pixels).

    Every source's raw files are checked before any is built. With on_error="skip", a source whose raw files are
    missing is reported and skipped, and the others go on; with "fail", missing raw files of any source stop the
    build before it starts, in one FileNotFoundError naming them all (complete shards stay and a rerun resumes).
    """
    from pixelqa.data.shards import build_shards  # webdataset + torch: only when building

    missing = check_mixture_inputs(entries, raw_root, out, roots, node_rank, num_nodes, on_error, "nothing built")
    manifests: dict[str, dict] = {}
    for e in entries:
        root = source_root(raw_root, e.name, roots)
        if f"{e.name}/{e.split}" in missing:
            print(f"skipped {e.name}/{e.split}: {missing[f'{e.name}/{e.split}']}")
            continue
        try:
            manifests[f"{e.name}/{e.split}"] = build_shards(
                e.name,
                root,
                out,
                split=e.split,
                workers=workers,
                on_error=on_error,
                node_rank=node_rank,
                num_nodes=num_nodes,
                max_samples=max_samples,
                progress=progress,
                frame_codec=frame_codec,
                # `data mixture` has no --wait: a rerun resumes, keeping the sources already built
                advice="wait for it to finish, then rerun this mixture command (finished sources are kept), or use "
                "another --out",
            )
        except FileNotFoundError as err:
            if on_error == "fail":
                raise FileNotFoundError(f"mixture: source {e.name} (raw root {root}): {err}") from None
            print(f"skipped {e.name}/{e.split}: {err}")
    return manifests


def check_mixture_inputs(
    entries: list[MixtureEntry],
    raw_root: str | Path,
    out: str | Path,
    roots: dict[str, str] | None,
    node_rank: int,
    num_nodes: int,
    on_error: str,
    outcome: str,
) -> dict[str, str]:
    """Before a mixture is built or submitted: every source has a converter (MixtureError) and, with on_error="fail",
    its raw files (one FileNotFoundError naming all missing, ending in `outcome`); returns `missing_sources`."""
    unknown = [e.name for e in entries if e.name not in set(list_sources())]
    if unknown:
        raise MixtureError(
            f"mixture: sources {unknown} have no registered converter; see `python -m pixelqa.data sources`"
        )
    names = sorted({e.name for e in entries})
    strays = sorted(set(roots or {}) - set(names))
    if strays:  # a misspelt name would leave its source at <raw root>/<name> without a word
        raise MixtureError(f"--roots: got {', '.join(strays)}, expected names of the mixture's sources: {names}")
    missing = missing_sources(entries, raw_root, out, roots, node_rank, num_nodes)
    if missing and on_error == "fail":
        # Checked for every source before any is built: one message names them all, and nothing is created.
        raise FileNotFoundError(
            f"mixture: raw files missing for {len(missing)} of {len(entries)} sources, {outcome}: "
            + "; ".join(missing.values())
        )
    return missing


def missing_sources(
    entries: list[MixtureEntry],
    raw_root: str | Path,
    out: str | Path,
    roots: dict[str, str] | None = None,
    node_rank: int = 0,
    num_nodes: int = 1,
) -> dict[str, str]:
    """`name/split` -> why, for each source whose raw files are missing (sources already built are not checked)."""
    from pixelqa.data.catalog import get_source
    from pixelqa.data.shards import manifest_name, missing_raw_files, shard_dir

    missing: dict[str, str] = {}
    for e in entries:
        if (shard_dir(Path(out), e.name, e.split) / manifest_name(node_rank, num_nodes)).is_file():
            continue  # a finished build needs no raw files (a rerun only confirms it)
        root = source_root(raw_root, e.name, roots)
        try:
            missing_raw_files(get_source(e.name), root, e.split)
        except FileNotFoundError as err:
            missing[f"{e.name}/{e.split}"] = f"source {e.name} (raw root {root}): {err}"
        except ValueError as err:  # e.g. a split the source does not have: the recipe is wrong, not the data
            raise MixtureError(f"mixture: source {e.name}: {err}") from None
    return missing


def write_mixture_spec(name: str, entries: list[MixtureEntry], out: str | Path) -> Path:
    """Write `<out>/mixture-<name>.json`: every source with split, repeat, sample count and share (atomic)."""
    from pixelqa.data.shards import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = mixture_table(entries, shards_root=out)
    spec = {"mixture": name, "sources": rows, "total_effective": sum(r["effective"] or 0 for r in rows)}
    path = out / f"mixture-{name}.json"
    write_text_atomic(path, json.dumps(spec, indent=1))
    return path


def verify_shards(
    entries: list[MixtureEntry], out: str | Path, num_nodes: int = 1, allow_missing: bool = False
) -> list[str]:
    """Problems with the built shards of `entries` (empty when sound): every node's manifest is there, built for
    this partition, and every shard it lists exists with its size and SHA-256; no shard file listed twice, and no
    key in two shards (each node of a build checks its own keys only).

    With `allow_missing`, a source with no manifest at all (skipped by `--on-error skip`) is not a problem.
    """
    from pixelqa.data.shards import manifest_name, sha256_file, shard_dir, shard_keys

    problems: list[str] = []
    for e in entries:
        folder = shard_dir(Path(out), e.name, e.split)
        names = [manifest_name(r, num_nodes) for r in range(num_nodes)]
        present = [n for n in names if (folder / n).is_file()]
        if not present and allow_missing:
            continue
        missing = [n for n in names if n not in present]
        problems += [f"{e.name}/{e.split}: no {n} (that node's build did not finish)" for n in missing]
        seen: dict[str, str] = {}
        damaged: set[str] = set()  # reported as differing: its keys are not read (its tar may not even open)
        for name in present:
            manifest = json.loads((folder / name).read_text())
            config = manifest.get("config", {})
            if config.get("num_nodes") != num_nodes:
                problems.append(f"{e.name}/{e.split}/{name}: built for num_nodes={config.get('num_nodes')}")
            for shard in manifest.get("shards", []):
                path = folder / shard["name"]
                if shard["name"] in seen:
                    problems.append(f"{path}: listed by {seen[shard['name']]} and {name}")
                seen[shard["name"]] = name
                if not path.is_file():
                    problems.append(f"{path}: missing (listed by {name})")
                elif path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
                    problems.append(f"{path}: size or SHA-256 differs from {name}")
                    damaged.add(shard["name"])
        where: dict[str, str] = {}
        twice: dict[tuple[str, str], list[str]] = {}  # (first shard, second shard) -> the keys both hold
        for shard_name in sorted(n for n in seen if (folder / n).is_file() and n not in damaged):
            for key in shard_keys(folder / shard_name):
                if key in where:
                    twice.setdefault((where[key], shard_name), []).append(key)
                where.setdefault(key, shard_name)
        for (first, second), keys in twice.items():  # one line per pair of shards: a copied shard has thousands
            shown = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            said = f"key {shown} is" if len(keys) == 1 else f"keys {shown} are"
            problems.append(f"{e.name}/{e.split}: {said} in {first} and {second}")
    return problems
