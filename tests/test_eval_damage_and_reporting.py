"""What `pixelqa.evaluate` does with damaged benchmark shards and how it reports what it scored: a suite result that
left damaged records out is a marked subset and is scored again once the shards are repaired; --strict stops the
suite; shards with nothing intact, a damaged result.json, a sample its protocol cannot read, a missing model folder,
SAM file or state_dict are one line with status 2; a capped run is not compared with the paper; the single form says
it is teacher-forced, warns of a sample limit and logs only its own overlays; suite children carry their counts."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from fixtures_video import build_revos

from pixelqa.data.shards import build_shards
from pixelqa.eval.official import Prediction, object_volume, target_ids
from pixelqa.eval.suite import (
    BenchmarkResult,
    BenchmarkSpec,
    SuiteError,
    finish_benchmark,
    paper_rows,
    run_benchmark,
)

REVOS = BenchmarkSpec("revos", "revos", "valid", "revos", "Tab. 1", {"3b": {"J&F": 62.1}})
TAR = "revos-valid-000000.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damage")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    return root / "shards"


def _copy(shards: Path, dest: Path) -> Path:
    """A copy of the shards root; returns the revos/valid folder of the copy."""
    shutil.copytree(shards, dest)
    return dest / "revos" / "valid"


def _flip_record(folder: Path, key: str) -> None:
    """Flip a byte inside `key`'s JSON member (its checksum in the index no longer matches)."""
    index = json.loads((folder / TAR.replace(".tar", ".idx.json")).read_text())
    members = next(r[4] for r in index["records"] if r[0] == key)
    offset = next(m[1] for m in members if m[0] == "json")
    data = bytearray((folder / TAR).read_bytes())
    data[offset + 20] ^= 0xFF
    (folder / TAR).write_bytes(bytes(data))


def _drop_meta(folder: Path, key: str) -> None:
    """Rewrite the shard with `key`'s JSON lacking `meta` (a valid record of another shape; index rebuilt)."""
    members = []
    with tarfile.open(folder / TAR) as t:
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name == f"{key}.json":
                sample = json.loads(data)
                sample.pop("meta", None)
                data = json.dumps(sample).encode()
            members.append((m, data))
    with tarfile.open(folder / TAR, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    (folder / TAR.replace(".tar", ".idx.json")).unlink()  # the reader checks such a shard record by record


def oracle_counting(calls: list[str]):
    """The ground truth of the first <|seg|> on the SAM frames; each asked key recorded in `calls`."""

    def answer(request):
        calls.append(request.sample.key)
        s = request.sample
        return Prediction("", [object_volume(s, target_ids(s), request.sam_frames)])

    return answer


def test_a_result_missing_damaged_records_is_a_marked_subset_and_repaired_shards_are_scored(shards, tmp_path):
    folder = _copy(shards, tmp_path / "shards")
    intact = (folder / TAR).read_bytes()
    _flip_record(folder, "v1-1")
    calls: list[str] = []
    run_benchmark(REVOS, oracle_counting(calls), tmp_path / "shards", tmp_path / "out")
    result = finish_benchmark(REVOS, tmp_path / "shards", tmp_path / "out")
    assert sorted(calls) == ["v1-0", "v1-2"]
    prov = result.provenance
    assert (prov["samples"], prov["samples_expected"], prov["damaged_records"]) == (2, 3, 1)
    row = next(r for r in paper_rows([REVOS], {"revos": result}, "3b", tmp_path / "shards") if r["metric"] == "J&F")
    assert row["scored / expected"] == "2 / 3 (subset: no diff)" and row["diff"] is None
    # repaired: the rerun scores the one sample it lacked (the partial result was not final), nothing else again
    (folder / TAR).write_bytes(intact)
    calls.clear()
    run_benchmark(REVOS, oracle_counting(calls), tmp_path / "shards", tmp_path / "out")
    result = finish_benchmark(REVOS, tmp_path / "shards", tmp_path / "out")
    assert calls == ["v1-1"]
    assert (result.provenance["samples"], result.provenance["damaged_records"]) == (3, 0)
    # now final: a further rerun asks nothing
    calls.clear()
    run_benchmark(REVOS, oracle_counting(calls), tmp_path / "shards", tmp_path / "out")
    assert calls == []


def test_strict_stops_the_suite_at_the_first_damaged_record(shards, tmp_path):
    _flip_record(_copy(shards, tmp_path / "shards"), "v1-1")
    with pytest.raises(SuiteError, match=r"revos: damaged shard \(strict mode\): .*'v1-1'.*drop --strict"):
        run_benchmark(REVOS, oracle_counting([]), tmp_path / "shards", tmp_path / "out", strict=True)


def test_shards_with_nothing_intact_are_an_error_not_an_empty_result(shards, tmp_path):
    folder = _copy(shards, tmp_path / "shards")
    (folder / TAR).write_bytes(b"\x00garbage" * 100)
    run_benchmark(REVOS, oracle_counting([]), tmp_path / "shards", tmp_path / "out")
    with pytest.raises(SuiteError, match=r"revos: no intact sample to score in .* \(3 damaged records\); rebuild"):
        finish_benchmark(REVOS, tmp_path / "shards", tmp_path / "out")
    assert not (tmp_path / "out" / "revos" / "result.json").exists()


def test_a_damaged_result_file_is_one_error_naming_it(shards, tmp_path):
    run_benchmark(REVOS, oracle_counting([]), shards, tmp_path / "out")
    finish_benchmark(REVOS, shards, tmp_path / "out")
    done = tmp_path / "out" / "revos" / "result.json"
    done.write_text('{"rows": [')
    with pytest.raises(SuiteError, match=r"result.json: damaged .*delete it and rerun"):
        run_benchmark(REVOS, oracle_counting([]), shards, tmp_path / "out")
    done.unlink()  # as the message says: the records are merged again, nothing scored twice
    calls: list[str] = []
    run_benchmark(REVOS, oracle_counting(calls), shards, tmp_path / "out")
    assert calls == [] and finish_benchmark(REVOS, shards, tmp_path / "out").provenance["samples"] == 3


def test_a_sample_its_protocol_cannot_read_is_named(shards, tmp_path):
    _drop_meta(_copy(shards, tmp_path / "shards"), "v1-1")
    with pytest.raises(SuiteError, match=r"revos \(revos/valid\): sample 'v1-1' cannot be scored by protocol revos"):
        run_benchmark(REVOS, oracle_counting([]), tmp_path / "shards", tmp_path / "out")


def test_a_prediction_of_the_wrong_shape_is_blamed_on_the_prediction_too(shards, tmp_path):
    def answer(request):  # one pixel row short of the sample's frames
        s = request.sample
        return Prediction("", [object_volume(s, target_ids(s), request.sam_frames)[:, :-1]])

    with pytest.raises(SuiteError, match=r"sample '.*' cannot be scored by protocol revos: .*check the prediction"):
        run_benchmark(REVOS, answer, shards, tmp_path / "out")


def test_a_capped_run_is_not_compared_with_the_paper():
    prov = {"samples": 3, "fingerprint": {"max_samples": None}}
    whole = BenchmarkResult("revos", [], {"J&F": 0.417}, {**prov, "max_new_tokens_cap": None})
    capped = BenchmarkResult("revos", [], {"J&F": 0.417}, {**prov, "max_new_tokens_cap": 1})
    (row,) = paper_rows([REVOS], {"revos": whole}, "3b")
    assert row["diff"] == pytest.approx(41.7 - 62.1)  # the same numbers without a cap are compared
    (row,) = paper_rows([REVOS], {"revos": capped}, "3b")
    assert row["diff"] is None and row["scored / expected"] == "3 / 3 (answers capped at 1 tokens: no diff)"


# ------------------------------------------------------------------------------------------------ the CLI


def _error_line(capsys, args: list[str], prefix: str = "recipe error: ") -> str:
    """Run the evaluate CLI; assert status 2, no traceback and the error as the last stderr line; return it."""
    from pixelqa.evaluate import main

    with pytest.raises(SystemExit) as err:
        main(args)
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert err.value.code == 2 and "Traceback" not in stderr and last.startswith(prefix), stderr
    return last


def _suite(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        "suite=paper",
        "suite.only=revos",
        f"data.shards={shards}",
        f"output_dir={out}",
        "tracking.enabled=false",
        *extra,
    ]


def _single(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        "recipe=stage3",
        "eval.benchmark=revos",
        "eval.split=valid",
        f"data.shards={shards}",
        f"output_dir={out}",
        "tracking.enabled=false",
        *extra,
    ]


def test_cli_model_files_and_foreign_checkpoints_are_one_line(shards, tmp_path, capsys):
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "sam_like.pt")
    msg = _error_line(capsys, [*_suite(shards, tmp_path / "a"), f"ckpt={tmp_path / 'sam_like.pt'}"])
    assert "holds no 'state_dict' (found ['model'])" in msg
    for form in (_suite, _single):
        msg = _error_line(capsys, [*form(shards, tmp_path / "b"), "model=unipixel-3b", "model.path=/nope/qwen"])
        assert msg.startswith("recipe error: model.path='/nope/qwen': model=unipixel-3b needs a local")
    msg = _error_line(capsys, [*_suite(shards, tmp_path / "c"), "model.mask_decoder.checkpoint=/nope/sam.pt"])
    assert "model.mask_decoder.checkpoint='/nope/sam.pt': no such file" in msg
    msg = _error_line(capsys, [*_suite(shards, tmp_path / "d"), "suite.max_new_tokens=0"])
    assert "suite.max_new_tokens: got '0', expected a positive integer" in msg


def test_cli_single_form_damage_and_missing_fields_are_one_line(shards, tmp_path, capsys):
    torch.set_num_threads(1)
    _flip_record(_copy(shards, tmp_path / "flipped"), "v1-1")
    msg = _error_line(capsys, [*_single(tmp_path / "flipped", tmp_path / "a"), "--strict"], prefix="data error: ")
    assert "damaged shard (strict mode)" in msg and "'v1-1'" in msg
    (tmp_path / "flipped" / "revos" / "valid" / TAR).write_bytes(b"\x00garbage" * 100)
    msg = _error_line(capsys, _single(tmp_path / "flipped", tmp_path / "b"), prefix="data error: ")
    assert "hold no intact samples (3 damaged records)" in msg
    _drop_meta(_copy(shards, tmp_path / "nometa"), "v1-1")
    msg = _error_line(capsys, _single(tmp_path / "nometa", tmp_path / "c"))
    assert "sample 'v1-1' has no meta.expression_type, which 2 other samples have" in msg


def test_cli_single_form_names_its_scoring_warns_of_a_limit_and_keeps_only_its_overlays(shards, tmp_path, capsys):
    from pixelqa.evaluate import run

    torch.set_num_threads(1)
    out = tmp_path / "run"
    run(_single(shards, out, "tracking.num_overlays=3"))
    overlays = out / "eval" / "revos" / "overlays"
    assert len(list(overlays.iterdir())) == 3
    capsys.readouterr()
    metrics = run(_single(shards, out, "tracking.num_overlays=3", "eval.max_samples=1"))
    printed = capsys.readouterr().out
    assert "scoring=teacher-forced" in printed and "(revos, teacher-forced) ====" in printed
    assert "note: eval.scoring=both applies to the synthetic split" in printed and "suite.only=revos" in printed
    assert "scored 1 / 1 samples of revos (eval.max_samples: the shards hold 3)" in printed
    assert "WARNING: revos is scored on 1 of 3 samples" in printed
    assert metrics["revos/samples_available"] == 3.0 and metrics["revos/samples_scored"] == 1.0
    assert [p.name[:2] for p in overlays.iterdir()] == ["00"]  # not the first run's 01 and 02 beside it


def test_suite_children_in_mlflow_carry_counts_and_what_scored_them(shards, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import pixelqa.eval.generation as gen
    import pixelqa.eval.model_loading as ml
    from pixelqa.evaluate import run

    monkeypatch.setattr(ml, "load_model", lambda recipe, ckpt_path: torch.nn.Identity())
    monkeypatch.setattr(gen, "default_answer_fn", lambda model, cap=None: (oracle_counting([]), "stub"))
    _flip_record(_copy(shards, tmp_path / "shards"), "v1-1")
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run([*_suite(tmp_path / "shards", tmp_path / "run"), "tracking.enabled=true", f"tracking.tracking_uri={store}"])
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    child = next(r for r in runs if r.info.run_name == "eval-revos")
    metrics, params = child.data.metrics, child.data.params
    assert (metrics["revos/samples_scored"], metrics["revos/samples_expected"]) == (2.0, 3.0)
    assert metrics["data/damaged_records"] == 1.0
    assert params["protocol"] == "revos" and params["split"] == "valid" and params["max_new_tokens_cap"] == "None"


@pytest.mark.parametrize("suite", [True, False])
def test_ctrl_c_is_one_line_with_status_130_saying_what_a_rerun_does(monkeypatch, capsys, suite):
    import pixelqa.evaluate as ev

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "run", interrupted)
    with pytest.raises(SystemExit) as err:
        ev.main(["suite=paper"] if suite else ["recipe=stage3"])
    stderr = capsys.readouterr().err
    assert err.value.code == 130 and "Traceback" not in stderr
    assert ("the same command resumes" if suite else "scores again from the start") in stderr.strip().splitlines()[-1]
