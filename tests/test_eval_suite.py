"""The suite runner (pixelqa.eval.suite / suite_runner) on shards built by the real converters from fixtures in
the datasets' own file formats: hand-computed ReVOS rows for an oracle and an empty predictor, skip messages with
the build command, resume after a failure, reruns under other settings refused (fingerprints), the paper-style
table, DDP (gloo) scoring every sample exactly once, and the CLI end to end with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_video import build_revos

from pixelqa.data.shards import build_shards
from pixelqa.eval.official import Prediction, object_volume, target_ids
from pixelqa.eval.suite import (
    BenchmarkSpec,
    Suite,
    SuiteError,
    benchmark_shards_missing,
    finish_benchmark,
    load_suite,
    merge_records,
    paper_rows,
    read_records,
    rows_markdown,
    run_benchmark,
)
from pixelqa.eval.suite_runner import check_stale, run_suite_benchmarks

REVOS = BenchmarkSpec("revos", "revos", "valid", "revos", "Tab. 1", {"3b": {"J&F": 62.1}})
MEVIS = BenchmarkSpec("mevis_valid_u", "mevis", "valid_u", "mevis")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    return root / "shards"


def oracle(request):
    """The ground truth of the first <|seg|> on the SAM frames."""
    s = request.sample
    return Prediction("", [object_volume(s, target_ids(s), request.sam_frames)])


def empty(request):
    """No <|seg|> at all."""
    return ("no idea", [])


def test_revos_rows_for_oracle_and_empty_predictions(shards, tmp_path):
    run_benchmark(REVOS, oracle, shards, tmp_path / "a")
    rows = {r["subset"]: r for r in finish_benchmark(REVOS, shards, tmp_path / "a").rows}
    # 3 expressions on 3 frames of 24x32: "0" referring (30 px per frame), "1" reasoning (absent on frame 0),
    # "2" referring with no target. Oracle: J = F = A = R = 1; A as run counts background only: 1 - |G| / 2304.
    assert rows["overall"]["J&F"] == pytest.approx(1.0) and rows["overall"]["R_as_run"] == pytest.approx(1.0)
    referring = (96.09 + 100.0) / 2  # round(100 * (1 - 90 / 2304), 2) and the blank expression
    assert rows["overall"]["A_as_run"] == pytest.approx((referring + 97.40) / 2 / 100)  # reasoning: 1 - 60 / 2304
    run_benchmark(REVOS, empty, shards, tmp_path / "b")
    result = finish_benchmark(REVOS, shards, tmp_path / "b")
    rows = {r["subset"]: r for r in result.rows}
    # J: "0" -> 0, "2" (blank, empty prediction) -> 1, "1" -> frame 0 both empty = 1, others 0 -> 33.33
    assert rows["referring"]["J"] == pytest.approx(0.5) and rows["reasoning"]["J"] == pytest.approx(0.3333)
    assert rows["overall"]["J&F"] == pytest.approx((0.5 + 0.3333) / 2)  # pooled would be 0.4444
    assert rows["overall"]["no_seg"] == 3 and rows["overall"]["R"] == pytest.approx(1.0)
    assert result.metrics["J&F"] == pytest.approx(0.41665)
    prov = json.loads((tmp_path / "b" / "revos" / "result.json").read_text())["provenance"]
    assert prov["samples"] == 3 and "round(arange(0, n, (n-1)/15))" in prov["frame_rule"]
    assert set(prov["shard_manifests"]) == {"manifest.json"} and len(prov["shard_manifests"]["manifest.json"]) == 64


def killed_at_second_call(calls: list[str]):
    """The oracle's answers, recording each asked key in `calls`; the second call fails as a killed run would."""

    def flaky(request):
        calls.append(request.sample.key)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return oracle(request)

    return flaky


def test_resume_scores_only_the_rest_and_finished_benchmarks_are_kept(shards, tmp_path):
    calls: list[str] = []
    flaky = killed_at_second_call(calls)
    with pytest.raises(RuntimeError, match="killed"):
        run_benchmark(REVOS, flaky, shards, tmp_path)
    assert len(merge_records(tmp_path / "revos")) == 1
    with pytest.raises(SuiteError, match="1 samples scored, expected 3"):
        finish_benchmark(REVOS, shards, tmp_path)
    assert run_benchmark(REVOS, flaky, shards, tmp_path) == 2  # the first sample is not asked again
    assert calls[2:] == calls[1:2] + calls[3:]  # the failed one is asked again, then the last
    first = finish_benchmark(REVOS, shards, tmp_path)
    assert run_benchmark(REVOS, flaky, shards, tmp_path) == 0  # finished: nothing runs
    assert finish_benchmark(REVOS, shards, tmp_path).metrics == first.metrics
    # a torn last line (a kill mid-write) is ignored
    path = tmp_path / "torn" / "revos" / "records.rank0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"key": "x", "index": 0}\n{"key": "y", "ind')
    assert [r["key"] for r in merge_records(path.parent)] == ["x"]


CKPT_A = {"checkpoint_sha256": "a" * 64, "model.path": "/release"}
CKPT_B = {"checkpoint_sha256": "b" * 64, "model.path": None}


def test_rerun_with_another_checkpoint_or_limit_is_refused_not_reused(shards, tmp_path):
    run_benchmark(REVOS, oracle, shards, tmp_path, fingerprint=CKPT_A)
    first = finish_benchmark(REVOS, shards, tmp_path, fingerprint=CKPT_A)
    assert first.provenance["samples"] == 3
    # identical settings: the finished result is reused as it is, nothing is asked again
    assert run_benchmark(REVOS, empty, shards, tmp_path, fingerprint=CKPT_A) == 0
    assert finish_benchmark(REVOS, shards, tmp_path, fingerprint=CKPT_A).metrics == first.metrics
    folder = tmp_path / "revos"
    with pytest.raises(SuiteError) as err:  # another checkpoint and no model.path: both named, old -> new
        run_benchmark(REVOS, empty, shards, tmp_path, fingerprint=CKPT_B)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: result.json") and "\n" not in msg
    assert "checkpoint_sha256: aaaaaaaaaaaa then, bbbbbbbbbbbb now" in msg
    assert "model.path: '/release' then, None now" in msg
    assert "new output_dir" in msg and "suite.fresh=true" in msg
    # 3 expressions were scored; a rerun on the first 2 must not report the 3-sample result
    with pytest.raises(SuiteError, match="max_samples: None then, 2 now"):
        run_benchmark(REVOS, empty, shards, tmp_path, limit=2, fingerprint=CKPT_A)
    with pytest.raises(SuiteError, match="max_samples: None then, 2 now"):
        finish_benchmark(REVOS, shards, tmp_path, limit=2, fingerprint=CKPT_A)
    assert json.loads((folder / "result.json").read_text())["metrics"] == first.metrics  # untouched


def test_records_resume_only_under_the_same_fingerprint(shards, tmp_path):
    calls: list[str] = []
    flaky = killed_at_second_call(calls)
    with pytest.raises(RuntimeError, match="killed"):
        run_benchmark(REVOS, flaky, shards, tmp_path, fingerprint=CKPT_A)
    with pytest.raises(SuiteError, match="records.rank0.jsonl was not scored with these settings"):
        run_benchmark(REVOS, empty, shards, tmp_path, fingerprint=CKPT_B)
    assert len(calls) == 2  # the refused run asked nothing
    # the records of sample 0 are resumed by a run on the first 2 samples (same records, smaller limit)
    assert run_benchmark(REVOS, empty, shards, tmp_path, limit=2, fingerprint=CKPT_A) == 1
    result = finish_benchmark(REVOS, shards, tmp_path, limit=2, fingerprint=CKPT_A)
    assert result.provenance["samples"] == 2 and result.provenance["fingerprint"]["max_samples"] == 2
    texts = [r["text"] for r in merge_records(tmp_path / "revos", limit=2)]
    assert texts == ["", "no idea"]  # sample 0 kept from the oracle, sample 1 from the new run


def test_results_and_records_without_a_fingerprint_are_not_trusted(shards, tmp_path):
    run_benchmark(REVOS, oracle, shards, tmp_path)
    finish_benchmark(REVOS, shards, tmp_path)
    done = tmp_path / "revos" / "result.json"
    data = json.loads(done.read_text())
    del data["provenance"]["fingerprint"]  # as written before fingerprints were kept
    done.write_text(json.dumps(data))
    with pytest.raises(SuiteError, match="result.json was not produced with these settings .no fingerprint recorded"):
        run_benchmark(REVOS, oracle, shards, tmp_path)
    old = tmp_path / "old" / "revos" / "records.rank0.jsonl"  # a records file of the old format: no header line
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"key": "x", "index": 0, "text": ""}) + "\n")
    with pytest.raises(SuiteError, match="records.rank0.jsonl was not scored with these settings .no fingerprint"):
        run_benchmark(REVOS, oracle, shards, tmp_path / "old")


def test_fresh_moves_stale_benchmarks_aside_and_keeps_matching_ones(shards, tmp_path):
    run_benchmark(REVOS, empty, shards, tmp_path, fingerprint=CKPT_A)
    finish_benchmark(REVOS, shards, tmp_path, fingerprint=CKPT_A)
    assert check_stale([REVOS], shards, tmp_path, CKPT_A, None, fresh=False) == []  # matching: nothing to do
    with pytest.raises(SuiteError, match="checkpoint_sha256"):
        check_stale([REVOS], shards, tmp_path, CKPT_B, None, fresh=False)
    assert check_stale([REVOS], shards, tmp_path, CKPT_B, None, fresh=True) == [tmp_path / "revos.stale-1"]
    assert (tmp_path / "revos.stale-1" / "result.json").is_file() and not (tmp_path / "revos").exists()
    run_benchmark(REVOS, oracle, shards, tmp_path, fingerprint=CKPT_B)
    assert finish_benchmark(REVOS, shards, tmp_path, fingerprint=CKPT_B).metrics["J&F"] == pytest.approx(1.0)


def test_cli_rerun_into_a_stale_output_dir_is_one_line_before_the_model_loads(shards, tmp_path, capsys, monkeypatch):
    import pixelqa.eval.model_loading as ml
    from pixelqa.evaluate import main

    def no_model(*args):
        raise AssertionError("the model must not load for a refused rerun")

    monkeypatch.setattr(ml, "load_model", no_model)
    out = tmp_path / "run" / "suite-paper"
    run_benchmark(REVOS, oracle, shards, out)  # scored under other settings (a bare run: no checkpoint, no model)
    finish_benchmark(REVOS, shards, out)
    args = ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as err:
        main([*args, "tracking.enabled=false"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert "\n" not in msg and msg.startswith(f"recipe error: {out / 'revos'}: result.json was not produced")
    assert "model.preset: not recorded then, 'tiny' now" in msg


def _weights_folder(folder: Path, value: float = 1.0) -> Path:
    """A model folder as an export leaves it: config.json, a weight file (one tensor), a tokenizer file."""
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "pixel_qwen2_5_vl", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text("{}")
    save_file({"lm_head.weight": torch.full((2, 4), value)}, folder / "model.safetensors")
    return folder


@pytest.fixture
def stub_model(monkeypatch):
    """No network is built and `empty` answers (counted): the fingerprint is what is under test, not the model."""
    import pixelqa.eval.generation as gen
    import pixelqa.eval.model_loading as ml

    calls = {"load": 0, "answer": 0}

    def load(recipe, ckpt_path):
        calls["load"] += 1
        return torch.nn.Identity()

    def answer(request):
        calls["answer"] += 1
        return empty(request)

    monkeypatch.setattr(ml, "load_model", load)
    monkeypatch.setattr(gen, "default_answer_fn", lambda model, cap=None: (answer, "pixelqa.predict.Predictor (stub)"))
    return calls


def test_cli_rerun_after_new_weights_in_the_same_folder_is_refused_naming_the_file(shards, tmp_path, stub_model):
    from pixelqa.config import RecipeError
    from pixelqa.eval.suite_runner import file_sha256
    from pixelqa.evaluate import run

    folder = _weights_folder(tmp_path / "release")
    sam = tmp_path / "sam2.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, sam)
    args = ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={tmp_path / 'run'}"]
    args += ["model=unipixel-3b", f"model.path={folder}", f"model.mask_decoder.checkpoint={sam}"]
    args += ["tracking.enabled=false"]
    first = run(args)
    assert stub_model == {"load": 1, "answer": 3}
    result = tmp_path / "run" / "suite-paper" / "revos" / "result.json"
    # the same folder, untouched: the stored result is reused, nothing is generated again
    assert run(args) == first and stub_model["answer"] == 3

    old = file_sha256(folder / "model.safetensors")
    _weights_folder(folder, value=1.001)  # re-exported in place: same path, one weight changed
    new = file_sha256(folder / "model.safetensors")
    with pytest.raises(RecipeError) as err:
        run(args)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{result.parent}: result.json was not produced with these settings")
    assert f"model.path_sha256[model.safetensors]: {old[:12]} then, {new[:12]} now" in msg
    assert "config.json" not in msg and "model.path:" not in msg  # only what changed is named
    assert stub_model["load"] == 2  # refused before the model loads
    stored = json.loads(result.read_text())["provenance"]["fingerprint"]
    assert set(stored["model.path_sha256"]) == {"config.json", "model.safetensors"}  # weights and config only
    assert stored["generation_route"] == "predictor"
    # another SAM checkpoint at the same path is named too
    _weights_folder(folder)
    torch.save({"model": {"w": torch.ones(2)}}, sam)
    with pytest.raises(RecipeError, match=r"model.mask_decoder.checkpoint_sha256: \w{12} then, \w{12} now"):
        run(args)
    # suite.fresh=true sets the old result aside and scores the new weights
    run([*args, "suite.fresh=true"])
    assert stub_model["answer"] == 6 and (result.parent.parent / "revos.stale-1" / "result.json").is_file()
    assert run(args) and stub_model["answer"] == 6


def test_cli_results_of_the_previous_version_or_another_route_are_refused(shards, tmp_path, stub_model, monkeypatch):
    import pixelqa.eval.suite_runner as sr
    from pixelqa.config import RecipeError
    from pixelqa.evaluate import run

    folder = _weights_folder(tmp_path / "release")
    args = ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={tmp_path / 'run'}"]
    args += ["model=unipixel-3b", f"model.path={folder}", "tracking.enabled=false"]
    run(args)
    result = tmp_path / "run" / "suite-paper" / "revos" / "result.json"
    data = json.loads(result.read_text())
    pristine = result.read_text()
    for key in ("model.path_sha256", "model.mask_decoder.checkpoint_sha256", "generation_route"):
        del data["provenance"]["fingerprint"][key]  # as the version before weight hashes wrote it
    result.write_text(json.dumps(data))
    with pytest.raises(RecipeError) as err:
        run(args)
    msg = str(err.value)
    assert "model.path_sha256: not recorded then, sha256:" in msg
    assert "generation_route: not recorded then, 'predictor' now" in msg and "suite.fresh=true" in msg
    result.write_text(pristine)
    monkeypatch.setattr(sr, "generation_route", lambda: "chat")  # the inference API missing: the chat stand-in
    with pytest.raises(RecipeError, match="generation_route: 'predictor' then, 'chat' now"):
        run(args)
    assert stub_model["load"] == 1


RELEASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"


@pytest.mark.skipif(not RELEASE.is_dir(), reason="shared released-format fixture not present")
def test_cli_suite_says_which_settings_a_release_overrides_and_fingerprints_the_values_used(
    shards, tmp_path, stub_model, capsys
):
    from pixelqa.evaluate import run

    args = ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={tmp_path / 'run'}"]
    args += ["model=unipixel-3b", f"model.path={RELEASE}", "tracking.enabled=false", "model.hidden_tokens=4"]
    run(args)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "is a released UniPixel, which fixes" in x]
    assert "model.hidden_tokens: 4 -> 2" in line and "(recorded as used in provenance.json)" in line
    result = tmp_path / "run" / "suite-paper" / "revos" / "result.json"
    assert json.loads(result.read_text())["provenance"]["fingerprint"]["model.hidden_tokens"] == 2
    # the value typed is not the value used: asking again for it does not make the stored result stale
    assert run([*args[:-1], "model.hidden_tokens=8"]) and stub_model == {"load": 2, "answer": 3}


def test_cli_unknown_benchmark_names_and_bad_max_samples_are_recipe_errors(shards, tmp_path, capsys):
    from pixelqa.evaluate import main

    for only, bad in (("bogus", "bogus"), ("revos,refdavis", "refdavis")):
        with pytest.raises(SystemExit) as err:
            main(["suite=paper", f"suite.only={only}", f"data.shards={shards}", "tracking.enabled=false"])
        assert err.value.code == 2
        msg = capsys.readouterr().err.strip()
        assert msg.startswith(f"recipe error: suite.only: got {bad!r}") and "'ref_davis17'" in msg and "\n" not in msg
    for value in ("-3", "0"):
        for form in (["recipe=stage3"], ["suite=paper", f"data.shards={shards}"]):
            with pytest.raises(SystemExit) as err:
                main([*form, f"eval.max_samples={value}", f"output_dir={tmp_path}", "tracking.enabled=false"])
            assert err.value.code == 2
            msg = capsys.readouterr().err.strip()
            expected = f"eval.max_samples={value} is out of range; expected null (every sample) or an integer >= 1"
            assert msg == f"recipe error: {expected}"
    # a suite runs in this process, as a single evaluation does: a launcher is refused, not ignored
    with pytest.raises(SystemExit) as err:
        main(["suite=paper", f"data.shards={shards}", "launcher=slurm", f"output_dir={tmp_path}"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.startswith("recipe error: launcher=slurm") and "\n" not in msg


def test_skip_message_names_the_build_command_and_table(shards, tmp_path):
    reason = benchmark_shards_missing(MEVIS, shards)
    assert reason.endswith(f"python -m pixelqa.data build mevis --root RAW/mevis --out {shards} --split valid_u")
    suite = Suite("t", [REVOS, MEVIS])
    results, skipped = run_suite_benchmarks(suite, oracle, shards, tmp_path, {"seed": 0})
    assert list(results) == ["revos"] and skipped == [reason]
    table = paper_rows(suite.benchmarks, results, "3b")
    jf = next(r for r in table if r["metric"] == "J&F")
    assert jf == {
        "table": "Tab. 1",
        "benchmark": "revos",
        "split": "valid",
        "metric": "J&F",
        "ours": 100.0,
        "paper": 62.1,
        "diff": 37.9,
        "unit": "%",
        "scored / expected": "3 / 3",  # every sample: the difference to the paper is shown
    }
    assert "| Tab. 1 | revos | valid | J&F | 100.0 | 62.1 | 37.9 |" in rows_markdown(table)
    assert next(r for r in paper_rows(suite.benchmarks, results, None) if r["metric"] == "J&F")["paper"] is None


def test_paper_suite_file_loads_and_bad_suites_are_named(tmp_path):
    suite = load_suite("paper")
    names = {s.name for s in suite.benchmarks}
    assert {"revos", "mevis_valid", "ref_youtube_vos", "groundmore", "pixelqa_mix", "mvbench"} <= names
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmarks: [{name: x, source: revos, split: valid, protocol: nope}]")
    with pytest.raises(ValueError, match="benchmark: got 'nope'"):
        load_suite(str(bad))
    with pytest.raises(SuiteError, match="suite: got 'missing'"):
        load_suite("missing")


def _ddp_worker(rank: int, world: int, shards: str, out: str, init: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # no OpenMP pool in a forked worker
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        results, _ = run_suite_benchmarks(Suite("t", [REVOS]), oracle, shards, out, {"world": world})
        if rank == 0:
            Path(out, "metrics.json").write_text(json.dumps(results["revos"].metrics))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_scores_every_sample_once(shards, tmp_path):
    # fork: the workers inherit the imports (spawn would re-import torch and pixelqa in each, ~20 s here)
    args = (2, str(shards), str(tmp_path), str(tmp_path / "init"))
    torch.multiprocessing.start_processes(_ddp_worker, args=args, nprocs=2, join=True, start_method="fork")
    ranks = [list(read_records(tmp_path / "revos" / f"records.rank{r}.jsonl")) for r in (0, 1)]
    assert [len(k) for k in ranks] == [2, 1] and not set(ranks[0]) & set(ranks[1])  # samples 0, 2 | 1
    single = tmp_path / "single"
    run_benchmark(REVOS, oracle, shards, single)
    assert json.loads((tmp_path / "metrics.json").read_text()) == finish_benchmark(REVOS, shards, single).metrics


def test_cli_without_shards_is_one_line_with_the_build_command(tmp_path, capsys):
    from pixelqa.evaluate import main

    with pytest.raises(SystemExit) as err:
        main(["suite=paper", f"data.shards={tmp_path}", "tracking.enabled=false"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert "\n" not in msg and f"python -m pixelqa.data build revos --root RAW/revos --out {tmp_path}" in msg
    with pytest.raises(SystemExit):
        main(["suite=paper", "suite.bogus=1"])
    assert "suite.bogus=1: unknown suite option" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_suite_end_to_end_with_the_tiny_model(shards, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from pixelqa.evaluate import run

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    args = [
        "suite=paper",
        "suite.only=revos,mevis_valid_u",
        "suite.max_new_tokens=4",
        f"data.shards={shards}",
        f"output_dir={tmp_path / 'run'}",
        "eval.max_samples=2",
    ]
    metrics = run(args)
    assert set(metrics) >= {"revos/J&F", "revos/R", "revos/R_as_run"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    out = tmp_path / "run" / "suite-paper"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["generation"].startswith(("pixelqa.predict.Predictor", "UniPixel.chat stand-in"))
    assert prov["max_new_tokens_cap"] == 4
    assert prov["skipped"][0].startswith("mevis_valid_u: no shards")
    assert len(merge_records(out / "revos")) == 2
    assert "| revos | valid | J&F |" in (out / "paper_table.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.info.run_name == "suite:paper")
    child = next(r for r in runs if r.info.run_name == "eval-revos")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "revos/J_and_F" in child.data.metrics
    assert np.isclose(child.data.metrics["revos/J_and_F"], metrics["revos/J&F"])
    # the same command again reuses the finished result; another limit is refused, naming it
    records = (out / "revos" / "records.rank0.jsonl").read_text()
    assert run(args) == metrics and (out / "revos" / "records.rank0.jsonl").read_text() == records
    from pixelqa.config import RecipeError

    with pytest.raises(RecipeError, match=r"revos: result.json was not produced .*max_samples: 2 then, 1 now"):
        run([*args[:-1], "eval.max_samples=1"])


def test_pixelqa_and_videorefer_q_on_converter_shards(tmp_path):
    from fixtures_video import build_videorefer_bench

    from pixelqa.eval.generation import tags_to_refs
    from pixelqa.eval.suite import iter_benchmark_samples

    build_videorefer_bench(tmp_path / "raw")
    build_shards("pixelqa", tmp_path / "raw", tmp_path / "shards", split="box", progress=False)
    build_shards("videorefer_bench_q", tmp_path / "raw", tmp_path / "shards", split="single_frame", progress=False)
    pixelqa = BenchmarkSpec("pixelqa_box", "pixelqa", "box", "pixelqa")

    def first_object_only(request):
        """Answers (B) for both questions and gives the true masks of the first prompted object only."""
        s = request.sample
        return ("B) the second", [object_volume(s, [request.prompts[0].object_id], request.sam_frames)])

    run_benchmark(pixelqa, first_object_only, tmp_path / "shards", tmp_path / "out")
    result = finish_benchmark(pixelqa, tmp_path / "shards", tmp_path / "out")
    # Q1 (answer A, two objects): wrong, objects J = 1, 0; Q2 (answer B, one object): right, J = 1
    assert result.metrics["Acc"] == 0.5
    assert result.metrics["J"] == pytest.approx(2 / 3, abs=1e-5)  # over objects; per question it would be 0.75
    samples = list(iter_benchmark_samples(pixelqa, tmp_path / "shards"))
    q1 = next(s for s in samples if len(s.prompts) == 2)
    from pixelqa.eval.official import get_official

    req = get_official("pixelqa").request(q1)
    assert q1.meta["key_frame"] in req.llm_frames and req.prefill_text.endswith("with IDs.")
    refs = tags_to_refs(req.text, [p.object_id for p in req.prompts])
    assert refs.startswith("[0] <|ref|> and [1] <|ref|> are boxes. Which is higher, [0] or [1]?")
    assert refs.endswith("(A) [0]\n(B) [1]\n(C) Neither\n(D) Both\nPlease only give the best option.")

    q = BenchmarkSpec("vq", "videorefer_bench_q", "single_frame", "videorefer_bench_q")
    run_benchmark(q, lambda r: ("(b)", []), tmp_path / "shards", tmp_path / "out")
    rows = finish_benchmark(q, tmp_path / "shards", tmp_path / "out").rows
    assert [(r["subset"], r["Acc"]) for r in rows] == [
        ("Basic Questions", 1.0),
        ("Relationship Question", 0.0),
        ("all", 0.5),
    ]


@pytest.mark.slow
def test_predictor_answer_fn_runs_pixelqa_two_pass_on_the_tiny_model(tmp_path, monkeypatch):
    pytest.importorskip("pixelqa.predict.predictor")
    from fixtures_video import build_videorefer_bench
    from test_eval_generation import ProcessorSpy

    from pixelqa.config import load_recipe, to_object
    from pixelqa.eval.generation import departures_of, predictor_answer_fn
    from pixelqa.eval.model_loading import load_model
    from pixelqa.eval.official import get_official
    from pixelqa.eval.suite import iter_benchmark_samples

    build_videorefer_bench(tmp_path / "raw")
    build_shards("pixelqa", tmp_path / "raw", tmp_path / "shards", split="mix", progress=False)
    spec = BenchmarkSpec("pixelqa_mix", "pixelqa", "mix", "pixelqa")
    sample = next(s for s in iter_benchmark_samples(spec, tmp_path / "shards") if len(s.prompts) == 2)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = load_model(to_object(load_recipe(["recipe=stage3"])), None)
    spy = ProcessorSpy(model.processor)
    monkeypatch.setattr(model, "processor", spy)
    answer_fn = predictor_answer_fn(model, max_new_tokens=2)
    protocol = get_official("pixelqa")
    request = protocol.request(sample)
    pred = answer_fn(request)
    h, w = sample.media.size
    # pass 1 segments both prompted objects on every requested frame, at the source size
    assert [m.shape for m in pred.masks[:2]] == [(len(request.sam_frames), h, w)] * 2
    rec = protocol.score(sample, request, pred)
    assert len(rec["objects"]) == 2 and all(0.0 <= v <= 1.0 for o in rec["objects"] for v in o)
    # pass 1 pre-fills with the released instruction; pass 2 reads the MCQ and the forced prefix
    assert spy.calls[0][0].rstrip().endswith("assistant\n[0] <|seg|> [1] <|seg|><|im_end|>")
    end = "Please only give the best option.<|im_end|>\n<|im_start|>assistant\nThe best option is ("
    assert spy.calls[-1][0].endswith(end)
    assert departures_of(answer_fn) == []


def _suite_args(shards: Path, out: Path) -> list[str]:
    return ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={out}", "tracking.enabled=false"]


def _one_line_exit_2(capsys, args: list[str]) -> str:
    """Run the evaluate CLI; assert status 2 and one `recipe error:` line on stderr; return it."""
    from pixelqa.evaluate import main

    with pytest.raises(SystemExit) as err:
        main(args)
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1 and msg.startswith("recipe error: "), msg
    return msg.strip()


def test_cli_rerun_after_a_torn_last_record_rescores_only_that_sample(shards, tmp_path, stub_model):
    # a full disk or a power loss cuts a record short: the rerun scored the rest, appended after the fragment (the
    # record glued to it), and its merge died with a traceback; every later rerun refused the whole file
    from pixelqa.evaluate import run

    args = _suite_args(shards, tmp_path / "run")
    first = run(args)
    folder = tmp_path / "run" / "suite-paper" / "revos"
    path = folder / "records.rank0.jsonl"
    header, one, two, three = path.read_text().splitlines(keepends=True)
    keys = [json.loads(x)["key"] for x in (one, two, three)]
    (folder / "result.json").unlink()
    path.write_text(header + one + two[: len(two) // 2])  # header, record 1, half of record 2
    assert run(args) == first and stub_model["answer"] == 3 + 2  # the torn sample and the third, nothing else
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines[1:]] == keys  # every line whole
    assert run(args) == first and stub_model["answer"] == 5  # finished: reused
    # a whole record whose newline was lost is kept; the next one starts on its own line
    (folder / "result.json").unlink()
    path.write_text(header + one + two.rstrip("\n"))
    assert run(args) == first and stub_model["answer"] == 6
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()[1:]] == keys


def test_cli_records_damaged_by_an_earlier_version_name_the_lines_to_drop(shards, tmp_path, stub_model, capsys):
    from pixelqa.evaluate import run

    args = _suite_args(shards, tmp_path / "run")
    first = run(args)
    folder = tmp_path / "run" / "suite-paper" / "revos"
    (folder / "result.json").unlink()
    path = folder / "records.rank0.jsonl"
    header, one, two, three = path.read_text().splitlines(keepends=True)
    path.write_text(header + one + two[: len(two) // 2] + two + three)  # what the old append left: line 3 glued
    msg = _one_line_exit_2(capsys, args)
    assert f"{path}: line 3 is not a JSON record" in msg and f"sed -i '3d' {path}" in msg, msg
    assert stub_model["load"] == 1  # refused before the model loads
    # doing what it says costs the samples on that line only
    path.write_text(header + one + three)
    assert run(args) == first and stub_model["answer"] == 3 + 1


def test_cli_suite_errors_of_the_merge_are_one_line(shards, tmp_path, stub_model, capsys):
    # a SuiteError raised after the scoring (merge_records) reached the user as a traceback with status 1
    from pixelqa.evaluate import run

    args = _suite_args(shards, tmp_path / "run")
    run(args)
    folder = tmp_path / "run" / "suite-paper" / "revos"
    (folder / "result.json").unlink()
    (folder / "records.rank1.jsonl").write_text((folder / "records.rank0.jsonl").read_text())
    msg = _one_line_exit_2(capsys, args)
    assert "was scored by two ranks" in msg


def test_cli_suite_into_a_read_only_output_dir_is_one_line_before_any_work(shards, tmp_path, stub_model, capsys):
    from test_preflight import _read_only_folder

    out = _read_only_folder(tmp_path) / "out"
    try:
        msg = _one_line_exit_2(capsys, _suite_args(shards, out))
    finally:
        if out.parent.is_relative_to(tmp_path):
            out.parent.chmod(0o755)
    assert msg.startswith(f"recipe error: output_dir={out}: cannot write in {out.parent} ")
    assert stub_model == {"load": 0, "answer": 0}


def test_an_unfinished_benchmark_build_is_skipped_naming_the_command_that_finishes_it(shards, tmp_path):
    import shutil

    partial = tmp_path / "shards"
    shutil.copytree(shards, partial)
    folder = partial / "revos" / "valid"
    (folder / "manifest.json").unlink()  # a build stopped before its manifest
    reason = benchmark_shards_missing(REVOS, partial)
    assert reason.startswith(f"revos: the shards in {folder} are an unfinished build (no manifest.json")
    assert reason.endswith(
        f"finish it with: python -m pixelqa.data build revos --root RAW --out {partial} --split valid"
        " (with the options of the build that stopped)"
    )
    (folder / ".progress-node000-of001.json").write_text(json.dumps({"config": {"max_count": 2}}))
    assert "--max-count 2" in benchmark_shards_missing(REVOS, partial)
    results, skipped = run_suite_benchmarks(Suite("t", [REVOS]), oracle, partial, tmp_path / "out", {"seed": 0})
    assert results == {} and skipped == [benchmark_shards_missing(REVOS, partial)]
