"""The fixes of the data QA pass (python -m pixelqa.data build / inspect / stats / mixture):

raw files changed under a stopped or a complete build, a shard file missing from a finished build, keys that
cleaning alone would merge, duplicate keys across the nodes of a build, ReasonSeg items that yielded nothing, and
the command-line errors that were tracebacks or silent."""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path

import pytest
from fixtures_image import build_reasonseg, labelme_rect, write_image
from test_data_cli_errors import user_error

from pixelqa.data import shards
from pixelqa.data.__main__ import main
from pixelqa.data.inspect_shards import shard_stats
from pixelqa.data.loader import resolve_shards
from pixelqa.data.mixture import MixtureEntry, mixture_table, verify_shards
from pixelqa.data.registry import Source, register_source
from pixelqa.data.shards import BuildError, BuildInputError, build_shards, iter_records, list_shards, unfinished_build
from pixelqa.data.synthetic import make_sample


def reasonseg_images(root: Path, names: list[str], without_json: tuple[str, ...] = ()) -> None:
    """ReasonSeg train images `names`, each with a one-query annotation (none for `without_json`)."""
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_image(train / f"{name}.jpg", seed=i)
        if name not in without_json:
            annotate(train, name)


def annotate(train: Path, name: str, text: str = "the thing", shapes: list | None = None) -> None:
    """`<name>.json`: one target rectangle inside the 32x24 fixture image unless `shapes` says otherwise."""
    shapes = [("target", 2, 2, 10, 10)] if shapes is None else shapes
    ann = {
        "text": [text] if text else [],
        "is_sentence": False,
        "shapes": [labelme_rect(label, *xy, image_name=f"{name}.jpg") for label, *xy in shapes],
    }
    (train / f"{name}.json").write_text(json.dumps(ann), encoding="utf-8")


def keys_of(folder: Path) -> list[str]:
    return [r["__key__"] for r in iter_records(list_shards(folder))]


# ---------------------------------------------------------------------------------------------- 1: raw changed


def test_a_resume_over_changed_raw_files_is_refused_naming_them(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, [f"b{i}" for i in range(5)], without_json=("b3",))
    args = ["build", "reasonseg", "--root", str(raw), "--out", str(out), "--max-count", "1", "--quiet"]
    assert "b3.json" in user_error(capsys, *args)  # stops at b3 after 3 complete shards
    folder = out / "reasonseg" / "train"
    assert keys_of(folder) == ["b0-0", "b1-0", "b2-0"]
    # The user completes the raw folder: b3's annotation and a forgotten a0 (sorted first: every position moves).
    annotate(raw / "train", "b3")
    write_image(raw / "train" / "a0.jpg", seed=9)
    annotate(raw / "train", "a0")
    err = user_error(capsys, *args)
    # Before the fix the build resumed at stored position 3 (now b2): a false duplicate, and a0 never converted.
    assert "raw files under" in err and "changed since the interrupted build" in err
    assert "train/a0.json added" in err and "train/b3.json added" in err and f"delete {folder}" in err
    assert keys_of(folder) == ["b0-0", "b1-0", "b2-0"]  # nothing written over the old shards


def test_a_resume_over_a_changed_item_list_is_refused(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, ["b0", "b1", "b2", "b3"], without_json=("b2",))
    with pytest.raises(BuildError):
        build_shards("reasonseg", raw, out, max_count=1, progress=False)
    # Only an image without annotation is added: the raw files (the annotations) are the same, the items are not.
    write_image(raw / "train" / "a0.jpg", seed=9)
    with pytest.raises(BuildInputError, match=r"the item list \(4 items then, 5 now\)"):
        build_shards("reasonseg", raw, out, max_count=1, progress=False)


def test_a_resume_over_the_same_raw_files_goes_on(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, ["b0", "b1", "b2", "b3"], without_json=("b2",))
    with pytest.raises(BuildError):
        build_shards("reasonseg", raw, out, max_count=1, progress=False)
    m = build_shards("reasonseg", raw, out, max_count=1, progress=False, on_error="skip")
    assert m["num_samples"] == 3 and [r["item"] for r in m["rejects"]] == [2]


def test_a_complete_build_whose_raw_files_changed_says_so(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, ["b0", "b1", "b2"])
    args = ["build", "reasonseg", "--root", str(raw), "--out", str(out), "--quiet"]
    main(args)
    main(args)  # the same raw files: complete, nothing to do, status 0
    capsys.readouterr()
    annotate(raw / "train", "b1", text="an edited query")
    err = user_error(capsys, *args)
    assert "changed since this build (train/b1.json changed; 1 in all)" in err
    assert "its shards hold the old data" in err and f"delete {out / 'reasonseg' / 'train'}" in err
    (raw / "train" / "b1.json").unlink()
    assert "train/b1.json removed" in user_error(capsys, *args)
    # raw files gone altogether: a complete build does not need them (as before), there is nothing to compare
    for p in (raw / "train").iterdir():
        p.unlink()
    assert build_shards("reasonseg", raw, out, progress=False)["num_samples"] == 3


def test_a_complete_rerun_hashes_only_raw_files_whose_size_or_mtime_moved(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, ["b0", "b1", "b2"])
    hashed: list[str] = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    build_shards("reasonseg", raw, out / "fresh", progress=False)
    hashed.clear()
    build_shards("reasonseg", raw, out / "fresh", progress=False)
    # written just before the build's stat: within a clock tick a same-size edit could keep the mtime, so the
    # stats do not vouch for them yet and each is hashed again ("racy git")
    assert sorted(n for n in hashed if n.endswith(".json")) == ["b0.json", "b1.json", "b2.json"]
    for p in (raw / "train").iterdir():  # raw files as they are in a real build: written long before
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - 60 * 10**9))
    build_shards("reasonseg", raw, out, progress=False)
    hashed.clear()
    build_shards("reasonseg", raw, out, progress=False)
    assert [n for n in hashed if n.endswith(".json")] == []  # each raw file's size and mtime as recorded: none read
    # The same size and content, a new mtime (a copy, a touch): hashed again, and found unchanged.
    b1 = raw / "train" / "b1.json"
    st = b1.stat()
    os.utime(b1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_shards("reasonseg", raw, out, progress=False)
    assert [n for n in hashed if n.endswith(".json")] == ["b1.json"]  # the others still vouched for
    # An edit of the same size whose mtime is put back by hand fools the quick check (as it fools rsync and make);
    # with the mtime moved the edit is found: the check really compares contents, not only stats.
    b1.write_text(b1.read_text().replace("the thing", "the thong"))
    os.utime(b1, ns=(st.st_atime_ns, st.st_mtime_ns))
    build_shards("reasonseg", raw, out, progress=False)
    os.utime(b1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(BuildInputError, match=r"train/b1.json changed; 1 in all"):
        build_shards("reasonseg", raw, out, progress=False)


def test_a_resume_of_a_build_begun_under_the_old_key_format_is_refused(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    reasonseg_images(raw, ["b0", "b1", "b2", "b3"], without_json=("b2",))
    with pytest.raises(BuildError):
        build_shards("reasonseg", raw, out, max_count=1, progress=False)
    folder = out / "reasonseg" / "train"
    progress = folder / shards.progress_name(0, 1)
    state = json.loads(progress.read_text())
    assert state["key_format"] == shards.KEY_FORMAT == 2
    del state["key_format"]  # as a build begun before keys carried hashes wrote it
    progress.write_text(json.dumps(state))
    with pytest.raises(BuildInputError, match=r"key format 1, now 2\): resuming it would mix both"):
        build_shards("reasonseg", raw, out, max_count=1, progress=False, on_error="skip")
    state["key_format"] = 2
    progress.write_text(json.dumps(state))
    m = build_shards("reasonseg", raw, out, max_count=1, progress=False, on_error="skip")
    assert m["num_samples"] == 3 and m["key_format"] == 2


def test_a_complete_build_whose_manifest_entries_are_malformed_is_one_line(tmp_path, capsys):
    build_shards("synthetic", ".", tmp_path, "val", max_samples=4, max_count=2, progress=False)
    manifest = tmp_path / "synthetic" / "val" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["shards"][0]["bytes"]  # a KeyError traceback before
    manifest.write_text(json.dumps(data))
    with pytest.raises(BuildInputError, match=r"manifest.json: got shards=.*expected a list of entries with name"):
        build_shards("synthetic", ".", tmp_path, "val", max_samples=4, max_count=2, progress=False)


def test_a_rebuild_with_other_options_names_them(tmp_path):
    build_shards("synthetic", ".", tmp_path, "val", max_samples=4, max_count=2, progress=False)
    with pytest.raises(BuildInputError) as info:
        build_shards("synthetic", ".", tmp_path, "val", max_samples=4, max_count=3, check_frames=False, progress=False)
    assert "--max-count 2 then, 3 in this command" in str(info.value)
    assert "--no-check-frames not set then, set in this command" in str(info.value)
    assert "--max-samples" not in str(info.value)  # the same in both


# ---------------------------------------------------------------------------------------------- 2: lost shard


@pytest.fixture
def lost_shard(tmp_path) -> tuple[Path, Path]:
    """A finished synthetic/train build of 12 samples in 3 shards whose second shard was deleted."""
    build_shards("synthetic", ".", tmp_path, "train", max_samples=12, max_count=4, progress=False)
    folder = tmp_path / "synthetic" / "train"
    gone = folder / "synthetic-train-000001.tar"
    gone.unlink()
    shards.index_path(gone).unlink()
    return tmp_path, gone


def test_stats_and_inspect_count_a_missing_shard_as_lost(lost_shard, capsys):
    out, gone = lost_shard
    st = shard_stats([out])
    assert st["samples"] == 8 and st["damaged"] == 4  # before the fix: 8 samples, 0 lost, not a word
    main(["stats", str(out)])
    printed = capsys.readouterr().out
    assert "damaged records skipped: 4" in printed and gone.name in printed
    line = user_error(capsys, "stats", str(out), "--strict")
    assert f"{gone}: missing (4 samples, listed by manifest.json)" in line and "at byte" not in line, line
    assert gone.name in user_error(capsys, "inspect", str(out / "synthetic" / "train"), "--n", "1", "--strict")


def test_the_loader_the_mixture_table_and_the_rebuild_name_a_missing_shard(lost_shard):
    out, gone = lost_shard
    folder = gone.parent
    with pytest.raises(FileNotFoundError, match=f"{gone.name} is missing \\(4 samples"):
        resolve_shards(folder)
    unfinished = unfinished_build(folder)  # what fit, evaluate and the suites check before reading a folder
    assert unfinished is not None and gone.name in unfinished.reason
    # not worded as a stopped build: a finished one lost a shard; the command redoes the folder, quoted
    assert unfinished.state == "a finished build with shards missing" and "delete and rebuild" in unfinished.action
    assert unfinished.command.startswith(f"rm -r {shlex.quote(str(folder))} && python -m pixelqa.data build ")
    (row,) = mixture_table([MixtureEntry("synthetic", "train")], shards_root=out)
    assert row["status"] == "lost" and gone.name in row["lost"][0]
    assert any(gone.name in p for p in verify_shards([MixtureEntry("synthetic", "train")], out))
    with pytest.raises(BuildInputError, match=f"shard {gone.name} listed there is missing \\(4 samples\\)"):
        build_shards("synthetic", ".", out, "train", max_samples=12, max_count=4, progress=False)


def test_a_folder_with_every_shard_is_read_as_before(tmp_path):
    build_shards("synthetic", ".", tmp_path, "train", max_samples=8, max_count=4, progress=False)
    folder = tmp_path / "synthetic" / "train"
    assert len(resolve_shards(folder)) == 2 and unfinished_build(folder) is None
    assert shard_stats([tmp_path])["damaged"] == 0


# ---------------------------------------------------------------------------------------------- 3 and 5: ReasonSeg


def test_names_that_differ_only_in_cleaned_characters_all_build(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    names = ["x.1", "x_1", "猫_1", "犬_1", "猫"]
    reasonseg_images(raw, names)
    m = build_shards("reasonseg", raw, out, progress=False)  # --on-error fail: before the fix, 'x_1-0' duplicate
    assert m["num_samples"] == 5 and m["num_rejects"] == 0
    keys = keys_of(out / "reasonseg" / "train")
    assert len(set(keys)) == 5 and "x_1-0" in keys  # a name that needed no cleaning keeps its key


def test_reasonseg_counts_every_item_that_yields_nothing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    build_reasonseg(raw)  # a_1, b_2: samples; c_3: ignore only (train leaves it out)
    train = raw / "train"
    annotate(train, "noimage")  # annotation without its image
    write_image(train / "outside.jpg", seed=1)
    annotate(train, "outside", shapes=[("target", 500, 500, 600, 600)])  # wholly off the 32x24 image
    write_image(train / "notext.jpg", seed=2)
    annotate(train, "notext", text="")
    write_image(train / "upper.JPG", seed=3)  # upper-case extension: an image like any other
    annotate(train, "upper")
    m = build_shards("reasonseg", raw, out, on_error="skip", progress=False)
    assert m["items"]["total"] == 7
    rejects = {r["key"] or r["reason"].split("'")[1]: r["reason"] for r in m["rejects"]}
    assert sorted(rejects) == ["noimage-0", "outside"]
    assert "image referenced but missing" in rejects["noimage-0"] and "outside the image" in rejects["outside"]
    assert {r["key"]: r["reason"] for r in m["skipped"]}.keys() == {"c_3-0", "notext-0"}
    # every item is accounted for: 3 written (a_1, b_2, upper), 2 rejected, 2 skipped
    assert keys_of(out / "reasonseg" / "train") == ["a_1-0", "a_1-1", "a_1-exp", "b_2-0", "upper-0"]
    # the benchmark split keeps an image with an off-image polygon (it paints nothing), as the official run scores it
    write_image(raw / "val" / "outside.jpg", seed=1)
    annotate(raw / "val", "outside", shapes=[("target", 2, 2, 10, 10), ("ignore", 500, 500, 600, 600)])
    m = build_shards("reasonseg", raw, out, split="val", on_error="fail", progress=False)
    assert not m["rejects"] and keys_of(out / "reasonseg" / "val") == ["d_4-0", "outside-0"]


def test_verify_names_a_copied_shard_once_and_skips_the_keys_of_a_damaged_one(tmp_path):
    build_shards("synthetic", ".", tmp_path, "train", max_samples=12, max_count=4, progress=False)
    folder = tmp_path / "synthetic" / "train"
    manifest = json.loads((folder / "manifest.json").read_text())
    first = manifest["shards"][0]
    copy = folder / "synthetic-train-copy.tar"  # the same 4 records under another name, listed too
    copy.write_bytes((folder / first["name"]).read_bytes())
    manifest["shards"].append({**first, "name": copy.name})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_shards([MixtureEntry("synthetic", "train")], tmp_path)
    assert (
        problem.startswith("synthetic/train: keys ") and f"and 1 more are in {first['name']} and {copy.name}" in problem
    )
    # a damaged (cut) shard is named once and its keys are not read: its tar would not even open
    last = folder / manifest["shards"][2]["name"]
    last.write_bytes(last.read_bytes()[:700])
    problems = verify_shards([MixtureEntry("synthetic", "train")], tmp_path)
    assert problems[0] == f"{last}: size or SHA-256 differs from manifest.json" and len(problems) == 2


# ---------------------------------------------------------------------------------------------- 4: nodes


@register_source("unit_one_raw_file")
class _OneRawFile(Source):
    """Three items read from one annotation file, `ann.json`; item 1 fails (a build stops there)."""

    def raw_files(self, root: Path, split: str) -> list[Path]:
        return [Path(root) / "ann.json"]

    def items(self, root: Path, split: str) -> list[int]:
        return [0, 1, 2]

    def convert(self, root: Path, split: str, item: int):
        if item == 1:
            raise ValueError("item 1 is damaged")
        s = make_sample(item, "train")
        s.source, s.split, s.key = "unit_one_raw_file", split, f"item{item}"
        yield s


def test_a_resume_whose_raw_file_is_gone_names_it(tmp_path):
    (tmp_path / "ann.json").write_text("{}")
    with pytest.raises(BuildError):
        build_shards("unit_one_raw_file", tmp_path, tmp_path / "out", max_count=1, progress=False)
    (tmp_path / "ann.json").unlink()  # the progress file is there: the build's raw files are read again
    with pytest.raises(FileNotFoundError) as info:
        build_shards("unit_one_raw_file", tmp_path, tmp_path / "out", max_count=1, progress=False)
    assert str(info.value) == (
        f"raw file of source 'unit_one_raw_file': expected {tmp_path / 'ann.json'} "
        "(see datasets/unit_one_raw_file.yaml)"
    )


@register_source("unit_twin_keys")
class _TwinKeys(Source):
    """Four items; items 0 and 3 give the same key (as two raw names that mean one key would)."""

    def items(self, root: Path, split: str) -> list[int]:
        return [0, 1, 2, 3]

    def convert(self, root: Path, split: str, item: int):
        s = make_sample(item, "train")
        s.source, s.split, s.key = "unit_twin_keys", split, "twin" if item in (0, 3) else f"item{item}"
        yield s


def test_a_key_in_two_nodes_shards_is_refused_as_one_node_refuses_it(tmp_path, monkeypatch):
    with pytest.raises(BuildError, match="got duplicate 'twin'"):
        build_shards("unit_twin_keys", ".", tmp_path / "one", progress=False)
    two = tmp_path / "two"
    build_shards("unit_twin_keys", ".", two, node_rank=0, num_nodes=2, progress=False)  # items 0, 1
    with pytest.raises(BuildError, match=r"'twin' \(also in unit_twin_keys-train-000000.tar\)"):
        build_shards("unit_twin_keys", ".", two, node_rank=1, num_nodes=2, progress=False)  # items 2, 3
    folder = two / "unit_twin_keys" / "train"
    assert not (folder / "manifest-node001-of002.json").exists()  # the build does not finish with duplicates
    # Without the check (as before) both nodes finish: the verify step of a launched build names the key.
    monkeypatch.setattr(shards, "_refuse_keys_of_other_nodes", lambda *a: None)
    build_shards("unit_twin_keys", ".", two, node_rank=1, num_nodes=2, progress=False)
    (problem,) = verify_shards([MixtureEntry("unit_twin_keys", "train")], two, num_nodes=2)
    assert "key 'twin' is in unit_twin_keys-train-000000.tar and unit_twin_keys-train-000001.tar" in problem


# ---------------------------------------------------------------------------------------------- 6-9: command line


def test_a_full_disk_is_one_line_and_the_rerun_completes(tmp_path, capsys, monkeypatch):
    args = ["build", "synthetic", "--out", str(tmp_path), "--max-samples", "8", "--max-count", "2", "--quiet"]
    real_add, real_close = shards._ShardSink.add, shards.wds.TarWriter.close
    state = {"adds": 0, "full": False}

    def add_until_full(self, *a, **k):
        state["adds"] += 1
        if state["adds"] == 6:  # the second record of the third shard
            state["full"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, *a, **k)

    def close_into_full_disk(self):  # closing the tar writer flushes into the full disk too (a 2nd traceback before)
        real_close(self)
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards._ShardSink, "add", add_until_full)
    monkeypatch.setattr(shards.wds.TarWriter, "close", close_into_full_disk)
    err = user_error(capsys, *args)
    assert "no space left on the device writing" in err and ".partial" in err and "run the same command again" in err
    monkeypatch.undo()
    main(args)
    assert len(keys_of(tmp_path / "synthetic" / "train")) == 8
    assert not list((tmp_path / "synthetic" / "train").glob("*.partial"))


def test_bad_command_line_values_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    main(["build", "synthetic", "--out", str(out), "--max-samples", "2", "--quiet"])
    capsys.readouterr()
    a_file = out / "synthetic" / "train" / "manifest.json"
    assert "not a folder" in user_error(capsys, "inspect", str(out), "--out", str(a_file))
    assert "--n: got 0, expected >= 1" in user_error(capsys, "inspect", str(out), "--n", "0")
    assert "--out: needs --root RAW" in user_error(capsys, "mixture", "synthetic", "--out", str(tmp_path / "m"))
    err = user_error(capsys, "build", "synthetic", "--out", str(tmp_path / "w"), "--workers", "-3")
    assert "workers: got -3, expected >= 1" in err and not (tmp_path / "w" / "synthetic").exists()
    err = user_error(
        capsys, "mixture", "synthetic", "--root", str(tmp_path), "--out", str(tmp_path / "m"), "--roots", "synthtic=/x"
    )
    assert "--roots: got synthtic, expected names of the mixture's sources: ['synthetic']" in err
    assert not (tmp_path / "m").exists()
