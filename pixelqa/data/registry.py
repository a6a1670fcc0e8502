"""Source converters (raw dataset -> Samples) and the dataset cards in the repository's `datasets/` folder.

The converter contract
----------------------
A converter turns one source's raw files, as downloaded, into `pixelqa.data.schema.Sample`s. Register it
with ``@register_source("name")`` in a module of `pixelqa/data/sources/` (every module there is imported
by `pixelqa.data.catalog`, which `get_source` / `list_sources` come from). Two forms:

1. A generator function ``fn(root: Path, split: str) -> Iterator[Sample]``; optionally pass
   ``raw_files=lambda root, split: [...]`` and ``splits=("train", "val")`` to the decorator::

       @register_source("refcoco", splits=("train", "val"), raw_files=lambda root, split: [root / "refs(unc).p"])
       def refcoco(root: Path, split: str) -> Iterator[Sample]: ...

2. A subclass of `Source` (preferred for big sources: the builder converts `items` in parallel workers)::

       @register_source("mevis")
       class MeViS(Source):
           splits = ("train", "valid_u")
           def raw_files(self, root, split): return [root / split / "meta_expressions.json"]
           def items(self, root, split): return sorted(video ids)          # cheap, picklable, ordered
           def convert(self, root, split, item): yield Sample(...)         # 0..n samples per item

   A subclass may instead override only ``samples(root, split)`` (one sequential stream).

Rules: output order must be deterministic (sort your listings; seed any randomness from the item), keys
unique within (source, split) (use `schema.make_key`), `raw_files` lists the annotation files (not
every frame) whose checksums go into the shard manifest; a missing raw file raises FileNotFoundError
naming the expected path. Samples need not be validated by the converter: the builder validates them
(and rejects or fails according to --on-error).

Bad records: a converter that cannot build one sample (a key frame without a mask, an empty or out-of-image
region, a broken region marker, a missing anno_id, an unreadable frame) yields ``rejected(...)`` for it, with a
reason naming the file and the record, and goes on with the item's other samples. The builder counts it like
any sample that fails validation: in the manifest's ``rejects`` with its key and reason (``--on-error skip``),
or as the error that stops the build (``--on-error fail``). Nothing is dropped silently; only the source's
documented filters (the reference recipe's own selection rules) drop records without a reject.

Cards
-----
``datasets/<name>.yaml`` describes a source: name, tasks, license, homepage, citation, raw_layout,
splits, stages ({stage: {repeat, split}}), optional paper, samples and notes. `load_card(name)` validates it.

``paper: true`` marks a source of the paper's training data (Table 12, `mixture.PAPER_SAMPLES`): the stage
mixtures assembled from the cards (`stage1`..`stage3`, which equal `recipes/data/stage1-mix` / `stage2-mix` /
`sft1m`) take the `stages` of those cards only. A card of your own leaves it out: its `stages` are then shown by
`python -m pixelqa.data cards` but change no paper mixture; to train on it, list it in a mixture of your own,
``recipes/data/<name>.yaml`` (docs/extending.md). ``paper: true`` on a source outside Table 12 is refused when a
stage mixture is assembled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelqa.data.schema import TASKS, Media, Sample, SampleError
from pixelqa.resources import resource_dir

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3")
CARD_KEYS_REQUIRED: tuple[str, ...] = ("name", "tasks", "license", "homepage", "citation", "raw_layout", "splits")
CARD_KEYS_OPTIONAL: tuple[str, ...] = ("stages", "paper", "samples", "notes", "description")


class Source:
    """Base class of converters; see the module docstring for the contract."""

    name: str = ""
    splits: tuple[str, ...] = ()

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """Annotation files whose checksums go into the manifest (default: none)."""
        return []

    def items(self, root: Path, split: str) -> Sequence[Any]:
        """Independent, picklable work items in a deterministic order (default: one item, None)."""
        return [None]

    def convert(self, root: Path, split: str, item: Any) -> Iterator[Sample]:
        """Samples of one item (default: the whole `samples` stream for the single None item)."""
        yield from self.samples(root, split)

    def samples(self, root: Path, split: str) -> Iterator[Sample]:
        """Every sample of a split, in order (default: `convert` over `items`)."""
        for item in self.items(root, split):
            yield from self.convert(root, split, item)

    def check_split(self, split: str) -> None:
        """Raise ValueError when `split` is not one this source declares (no check if none declared)."""
        if self.splits and split not in self.splits:
            raise ValueError(f"split: got {split!r} for source {self.name!r}, expected one of {list(self.splits)}")


class _FunctionSource(Source):
    """A generator function registered as a source."""

    def __init__(
        self,
        fn: Callable[[Path, str], Iterable[Sample]],
        raw_files: Callable[[Path, str], list[Path]] | None,
    ) -> None:
        self._fn = fn
        self._raw_files = raw_files

    def raw_files(self, root: Path, split: str) -> list[Path]:
        """Delegates to the `raw_files` given at registration."""
        return list(self._raw_files(root, split)) if self._raw_files else []

    def samples(self, root: Path, split: str) -> Iterator[Sample]:
        """Delegates to the registered function."""
        yield from self._fn(root, split)


class RecordError(SampleError):
    """A raw record that cannot become a sample; its message names the file, the record and what is wrong."""


@dataclass
class RejectedSample(Sample):
    """Stands in for a sample a converter could not build: `validate` raises RecordError(reason), so the
    builder's reject path counts it (key + reason in the manifest) without ending the item's other samples."""

    reason: str = ""

    def validate(self, check_frames: bool = False) -> Sample:
        """Always raises RecordError with the converter's reason."""
        raise RecordError(self.reason)

    def to_record(self) -> dict:
        """Always raises: a rejected sample is never written."""
        raise RecordError(self.reason)


def rejected(source: str, split: str, task: str, key: str, reason: str) -> RejectedSample:
    """A RejectedSample for `key` with `reason` (name the file and the record in it)."""
    return RejectedSample(
        key=key, source=source, split=split, task=task, media=Media("image", [], (0, 0)), reason=str(reason)
    )


@dataclass
class SkippedSample(RejectedSample):
    """Stands in for an item that holds nothing to ask (e.g. a label image of ignore pixels only): not damage, so
    the builder counts it in the manifest's `skipped` (key + reason) and never stops for it, whatever --on-error."""


def skipped(source: str, split: str, task: str, key: str, reason: str) -> SkippedSample:
    """A SkippedSample for `key` with `reason` (name the file and why it yields nothing)."""
    return SkippedSample(
        key=key, source=source, split=split, task=task, media=Media("image", [], (0, 0)), reason=str(reason)
    )


_REGISTRY: dict[str, Source] = {}
# name -> (module, qualname) of the class or function registered under it
_ORIGINS: dict[str, tuple[str, str]] = {}


def _origin(obj: Any) -> tuple[str, str]:
    """(module, qualname) of a registered class or function: the same for a definition run again (a notebook cell
    re-run, a module reloaded)."""
    return str(getattr(obj, "__module__", None)), str(getattr(obj, "__qualname__", None) or repr(obj))


def register_source(
    name: str,
    splits: Sequence[str] = (),
    raw_files: Callable[[Path, str], list[Path]] | None = None,
) -> Callable:
    """Decorator registering a converter class (Source subclass) or generator function under `name`.

    Registering a name again with a definition of the same module and qualified name (a re-run notebook cell, a
    reloaded module) replaces the earlier one; another class or function under a taken name is refused.
    """
    if not isinstance(name, str) or not name or any(c in name for c in "./ "):
        raise ValueError(f"name: got {name!r}, expected a non-empty name without '.', '/' or spaces")

    def wrap(obj: Any) -> Any:
        origin = _origin(obj)
        if name in _REGISTRY and _ORIGINS.get(name) != origin:
            held = ".".join(_ORIGINS[name]) if name in _ORIGINS else type(_REGISTRY[name]).__name__
            raise ValueError(
                f"name: source {name!r} is already registered (by {held}), expected a new name for "
                f"{'.'.join(origin)} (the same definition run again replaces it)"
            )
        if isinstance(obj, type):
            if not issubclass(obj, Source):
                raise TypeError(f"{obj.__name__}: got a class that is not a pixelqa.data.registry.Source subclass")
            if obj.samples is Source.samples and obj.convert is Source.convert:
                raise TypeError(f"{obj.__name__}: a Source must override `samples` or `items` + `convert`")
            if raw_files is not None:
                raise TypeError(f"{obj.__name__}: define raw_files as a method on a Source subclass")
            inst = obj()
        elif callable(obj):
            inst = _FunctionSource(obj, raw_files)
        else:
            raise TypeError(f"register_source({name!r}): got {obj!r}, expected a Source subclass or a function")
        inst.name = name
        if splits:
            inst.splits = tuple(splits)
        _REGISTRY[name], _ORIGINS[name] = inst, origin
        return obj

    return wrap


def registered_sources() -> dict[str, Source]:
    """The converters registered so far, by name (`pixelqa.data.catalog` imports them all first)."""
    return dict(_REGISTRY)


# ---------------------------------------------------------------------------------------------- cards


@dataclass
class StageUse:
    """How a stage of training uses a source: repeat factor and split."""

    repeat: int
    split: str = "train"


@dataclass
class Card:
    """A validated dataset card."""

    name: str
    tasks: list[str]
    license: str
    homepage: str
    citation: str
    raw_layout: str
    splits: list[str]
    stages: dict[str, StageUse] = field(default_factory=dict)
    paper: bool = False  # a paper Table 12 source: its stages make up the paper's stage mixtures
    samples: dict[str, int] = field(default_factory=dict)
    notes: str = ""
    description: str = ""
    path: Path | None = None


def datasets_dir() -> Path:
    """The `datasets/` folder of cards: $PIXELQA_HOME/datasets, a clone's, else the copies a wheel installs
    (pixelqa.resources); a FileNotFoundError saying where it looked when there is none."""
    return resource_dir("datasets")


def parse_card(data: Any, where: str = "card") -> Card:
    """Validate a card's parsed YAML and return a Card; errors name the field, value and expectation."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: got {type(data).__name__}, expected a YAML mapping")
    missing = [k for k in CARD_KEYS_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}, expected all of {list(CARD_KEYS_REQUIRED)}")
    unknown = sorted(set(data) - set(CARD_KEYS_REQUIRED) - set(CARD_KEYS_OPTIONAL))
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {unknown}, expected only {list(CARD_KEYS_REQUIRED + CARD_KEYS_OPTIONAL)}"
        )
    for k in ("name", "license", "homepage", "citation", "raw_layout"):
        if not isinstance(data[k], str) or not data[k].strip():
            raise ValueError(f"{where}.{k}: got {data[k]!r}, expected a non-empty string")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"{where}.tasks: got {tasks!r}, expected a non-empty list among {sorted(TASKS)}")
    splits = data["splits"]
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and s for s in splits):
        raise ValueError(f"{where}.splits: got {splits!r}, expected a non-empty list of split names")
    stages: dict[str, StageUse] = {}
    for stage, use in (data.get("stages") or {}).items():
        if stage not in STAGES:
            raise ValueError(f"{where}.stages: got stage {stage!r}, expected one of {list(STAGES)}")
        if not isinstance(use, dict) or set(use) - {"repeat", "split"}:
            raise ValueError(f"{where}.stages.{stage}: got {use!r}, expected {{repeat: int, split: str}}")
        repeat = use.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"{where}.stages.{stage}.repeat: got {repeat!r}, expected an integer >= 1")
        split = use.get("split", "train")
        if split not in splits:
            raise ValueError(f"{where}.stages.{stage}.split: got {split!r}, expected one of {splits}")
        stages[stage] = StageUse(repeat=repeat, split=split)
    paper = data.get("paper", False)
    if not isinstance(paper, bool):
        raise ValueError(f"{where}.paper: got {paper!r}, expected true or false")
    if paper and not stages:
        # the flag says which stage mixtures the card's stages join: without stages it would mean nothing
        raise ValueError(f"{where}.paper: true without stages; expected the stages the paper trains it in")
    samples = data.get("samples") or {}
    if not isinstance(samples, dict) or not all(isinstance(v, int) and v >= 0 for v in samples.values()):
        raise ValueError(f"{where}.samples: got {samples!r}, expected a mapping split -> sample count")
    return Card(
        name=data["name"],
        tasks=list(tasks),
        license=data["license"],
        homepage=data["homepage"],
        citation=data["citation"],
        raw_layout=data["raw_layout"],
        splits=list(splits),
        stages=stages,
        paper=paper,
        samples=dict(samples),
        notes=str(data.get("notes") or ""),
        description=str(data.get("description") or ""),
    )


def load_card(name_or_path: str | Path) -> Card:
    """Load and validate `datasets/<name>.yaml` (or a path to a card)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = datasets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in datasets_dir().glob("*.yaml")) if datasets_dir().is_dir() else []
        raise FileNotFoundError(f"card: {path} does not exist; cards found: {known}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    card = parse_card(data, where=str(path))
    if card.name != path.stem:
        raise ValueError(f"{path}.name: got {card.name!r}, expected the file stem {path.stem!r}")
    card.path = path
    return card


def list_cards() -> list[str]:
    """Names of all cards in `datasets/`, sorted."""
    d = datasets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []
