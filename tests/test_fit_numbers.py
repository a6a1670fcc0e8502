"""What a fit's numbers cover and mean: both scorings of a fit score one sample set, whose size is logged, and the
evaluate command it prints reproduces them; the validation loss is one objective over the pass (not a mean of
batch means); each validation is logged once, every name at one step; unusable samples are left out of both
scorings and counted; the paper table shows counts as counts and marks a subset; teacher-forced is said where the
numbers are read (fit's printout, the grid's table)."""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

import pytest
import torch

from pixelqa import evaluate, fit
from pixelqa.config import load_recipe, to_object
from pixelqa.data.loader import UnusableSampleError
from pixelqa.eval.suite import BenchmarkResult, load_suite, paper_rows, rows_csv, rows_markdown
from pixelqa.train import datamodule
from pixelqa.train.datamodule import EvalBatches, SourceIndex, build_synthetic

VAL = 10  # synthetic validation samples: tasks res .. video_qa, then res, rvos again
TERMS = ("val/loss", "val/lm", "val/focal", "val/dice", "val/iou", "val/objectness")


def _args(work: Path, name: str, *extra: str) -> list[str]:
    """A tiny stage-3 fit on the shared synthetic shards, into `work/name`, no MLflow unless `extra` says so."""
    return [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=32",
        f"data.synthetic_val={VAL}",
        "data.batch_size=2",
        "data.val_batch_size=3",
        "trainer.enable_progress_bar=false",
        "tracking.log_overlays=false",
        "eval.generate_max_new_tokens=4",
        f"output_dir={work / name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder whose `base` run trained 20 steps (its J&F on the validation split is above 0)."""
    work = tmp_path_factory.mktemp("numbers")
    fit.run(_args(work, "base", "trainer.max_steps=20", "tracking=none", "eval.after_fit=false"))
    return work


def _unusable(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Make the sample `key` unusable for scoring, as a memory object that is never visible makes a sample."""
    real = datamodule.prepare_sample

    def prepare(sample, num_frames, rng):
        if sample.key == key:
            raise UnusableSampleError(f"{key}: memory object 0 is never visible")
        return real(sample, num_frames, rng)

    monkeypatch.setattr(datamodule, "prepare_sample", prepare)


def test_a_capped_fit_scores_one_sample_set_once_and_its_evaluate_command_reproduces_it(
    trained, tmp_path, monkeypatch, capsys
):
    from mlflow import MlflowClient

    from pixelqa import tracking

    bad = SourceIndex(trained / "shards", "synthetic", "val").refs[2].key  # among the first 7
    _unusable(monkeypatch, bad)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = _args(
        trained,
        "capped",
        f"init_from={trained / 'base'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",  # the final weights are validated inside fit
        "trainer.log_every_n_steps=1",
        "eval.max_samples=7",
        "eval.scoring=both",
        f"tracking.tracking_uri={uri}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}",
    )
    m = fit.run(args)
    out = capsys.readouterr().out
    # both scorings cover the first 7 samples less the unusable one, and say so
    assert m["val/samples"] == m["val/gen/samples"] == 6
    assert m["val/samples_expected"] == m["val/gen/samples_expected"] == 7
    assert m["val/samples_skipped"] == m["val/gen/samples_skipped"] == 1
    assert m["val/J&F"] > 0  # a score, not the empty one every model gets

    line = next(x for x in out.splitlines() if x.startswith("evaluate:"))
    cmd = shlex.split(line.removeprefix("evaluate:"))
    assert cmd[1:3] == ["-m", "pixelqa.evaluate"] and cmd.count("eval.max_samples=7") == 1
    ev = evaluate.run(cmd[3:])
    assert (ev["synthetic/samples_scored"], ev["synthetic/samples_expected"]) == (6, 7)
    for name in ("J&F", "J", "F", "qa_acc", "gen/J&F", "gen/qa_acc"):
        assert ev[f"synthetic/{name}"] == m[f"val/{name}"], name  # the same samples, the same number

    # one validation of the final weights (inside fit; not again after it), every name at the same step
    client = MlflowClient(uri)
    run_id = tracking.load_run_id(trained / "capped" / "checkpoints")
    keys = ("val/J_and_F", "0_J_and_F", "val/loss", "val/samples", "val/samples_skipped", "val/gen/J_and_F")
    steps = {k: [h.step for h in client.get_metric_history(run_id, k)] for k in keys}
    assert steps == dict.fromkeys(keys, [1]), steps


def test_a_validation_after_fit_only_logs_every_name_at_the_step_a_validation_inside_fit_would(trained, tmp_path):
    from mlflow import MlflowClient

    from pixelqa import tracking

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    fit.run(
        _args(
            trained,
            "after_fit",
            f"init_from={trained / 'base'}",
            "trainer.max_steps=2",  # no trainer.val_check_interval: the only validation is the one after fit
            "data.val_samples=4",
            "eval.scoring=both",
            f"tracking.tracking_uri={uri}",
            f"tracking.artifact_location={tmp_path / 'artifacts'}",
        )
    )
    client = MlflowClient(uri)
    run_id = tracking.load_run_id(trained / "after_fit" / "checkpoints")
    keys = ("val/J_and_F", "0_J_and_F", "val/gen/J_and_F")
    steps = {k: [h.step for h in client.get_metric_history(run_id, k)] for k in keys}
    assert steps == dict.fromkeys(keys, [1]), steps  # after step 2: at 1, as Lightning logs one inside fit


def test_validation_loss_is_one_objective_over_the_pass_whatever_the_batches(trained):
    from pixelqa.eval.model_loading import load_model
    from pixelqa.train.datamodule import make_collator, usable

    init = f"init_from={trained / 'base'}"
    common = [init, "trainer.max_steps=0", "data.val_samples=7", "eval.scoring=teacher_forced", "tracking=none"]
    runs = {
        bs: fit.run(_args(trained, f"val_bs{bs}", *common, f"data.val_batch_size={bs}")) for bs in (1, 7)
    }  # 7 x 1 and 1 x 7: the same samples, the same model
    for key in TERMS:
        assert runs[1][key] == pytest.approx(runs[7][key], rel=1e-5, abs=1e-6), key
    assert runs[1]["val/samples"] == runs[7]["val/samples"] == 7

    # recomputed sample by sample from the model's per-sample losses: LM token-weighted, mask terms averaged over
    # the samples with masks (as the training step normalises them)
    recipe = to_object(load_recipe(_args(trained, "val_bs1", *common)))
    model = load_model(recipe, trained / "base" / "checkpoints" / "last.ckpt").eval()
    collate = make_collator(model.processor, recipe.data, recipe.model.memory.variant)
    index = SourceIndex(trained / "shards", "synthetic", "val")
    lm, tokens, masked = 0.0, 0, {"focal": [], "dice": [], "iou": [], "objectness": []}
    for i in range(7):
        batch = collate([usable(index.read(i), recipe.data.num_frames)])
        with torch.no_grad():
            losses = model(batch).losses
        n = int((batch.labels[:, 1:] != -100).sum())
        lm, tokens = lm + float(losses["lm"]) * n, tokens + n
        if batch.seg_masks[0].shape[0] > 0:
            for term, values in masked.items():
                values.append(float(losses[term]))
    means = {"lm": lm / tokens, **{t: sum(v) / len(v) for t, v in masked.items()}}
    w = recipe.model.loss
    expect = {f"val/{t}": v for t, v in means.items()}
    expect["val/loss"] = sum(float(getattr(w, t)) * v for t, v in means.items())
    for key in TERMS:
        assert runs[7][key] == pytest.approx(expect[key], rel=1e-5, abs=1e-6), key


def test_the_generation_pass_leaves_out_what_the_teacher_forced_pass_cannot_score(tmp_path, monkeypatch):
    from pixelqa.eval.synthetic_generate import read_samples

    build_synthetic(tmp_path, "val", 6)
    index = SourceIndex(tmp_path, "synthetic", "val")
    _unusable(monkeypatch, index.refs[1].key)
    forced = [k for b in EvalBatches([index], lambda s: [x.key for x in s], 2, 0, limit=5) for k in b]
    recipe = to_object(load_recipe(["recipe=stage3", f"data.shards={tmp_path}", "tracking=none"]))
    samples, count = read_samples(recipe, limit=5)
    assert [s.key for s in samples] == forced == [index.refs[i].key for i in (0, 2, 3, 4)]
    assert (count.scored, count.expected) == (4, 5)


def test_fit_validation_cap_is_data_val_samples_and_eval_max_samples_the_smaller(tmp_path):
    from pixelqa.fit import evaluate_command
    from pixelqa.train.datamodule import validation_limit

    def line(*extra: str) -> list[str]:
        args = [f"output_dir={tmp_path}", "tracking=none", *extra]
        return shlex.split(evaluate_command(to_object(load_recipe(args)), args))

    data = to_object(load_recipe(["data.val_samples=8"])).data
    assert [validation_limit(data, c) for c in (None, 3, 20)] == [8, 3, 8]
    assert validation_limit(to_object(load_recipe([])).data, None) is None
    assert [a for a in line("data.val_samples=8") if "max_samples" in a] == ["eval.max_samples=8"]
    assert [a for a in line("data.val_samples=8", "eval.max_samples=20") if "max_samples" in a] == [
        "eval.max_samples=8"  # the cap fit used, not the user's larger one beside it
    ]
    assert [a for a in line("eval.max_samples=3") if "max_samples" in a] == ["eval.max_samples=3"]
    assert not [a for a in line() if "max_samples" in a]


def _result(metrics: dict[str, float], samples: int, limit: int | None = None) -> BenchmarkResult:
    return BenchmarkResult("x", [], metrics, {"samples": samples, "fingerprint": {"max_samples": limit}})


def test_paper_table_shows_counts_as_counts_and_gives_no_paper_difference_on_a_subset(tmp_path):
    from pixelqa.eval.official import get_official

    suite = load_suite("paper")
    specs = {s.name: s for s in suite.benchmarks}
    # the protocols' own headline metrics
    assert get_official(specs["mevis_valid"].protocol).headline == ("expressions",)
    assert get_official(specs["videorefer_d_single"].protocol).headline == ("samples",)
    mix = get_official(specs["pixelqa_mix"].protocol).headline
    assert {"J&F", "Acc"} <= set(mix)
    results = {
        "mevis_valid": _result({"expressions": 140.0}, 140),
        "videorefer_d_single": _result({"samples": 50.0}, 50),
        "pixelqa_mix": _result({k: 0.6 for k in mix}, 20),
    }
    rows = {(r["benchmark"], r["metric"]): r for r in paper_rows(suite.benchmarks, results, "3b")}
    shown = ("ours", "paper", "diff", "unit", "scored / expected")
    assert [rows["mevis_valid", "expressions"][k] for k in shown] == [140, None, None, "count", "140 / 140"]
    assert [rows["videorefer_d_single", "samples"][k] for k in shown] == [50, None, None, "count", "50 / 50"]
    jf = rows["pixelqa_mix", "J&F"]
    assert (jf["ours"], jf["paper"], jf["diff"], jf["unit"]) == (60.0, 60.6, -0.6, "%")
    table = rows_markdown(list(rows.values()))
    assert "| mevis_valid | valid | expressions | 140 | - | - | count | 140 / 140 |" in table
    assert "14000" not in table and "5000" not in table

    # the first 4 samples (eval.max_samples=4): ours is shown, the paper's value too, no difference, and it says so
    results["pixelqa_mix"] = _result({k: 0.6 for k in mix}, 4, limit=4)
    sub = next(r for r in paper_rows(suite.benchmarks, results, "3b") if r["metric"] == "J&F")
    assert (sub["ours"], sub["paper"], sub["diff"]) == (60.0, 60.6, None)
    assert sub["scored / expected"] == "4 / ? (subset: no diff)"  # no shards here: the total is unknown
    # with the shards at hand the total is counted
    build_synthetic(tmp_path, "val", 6)
    spec = type(specs["pixelqa_mix"])("syn", "synthetic", "val", "pixelqa", "", {"3b": {"J&F": 60.6}})
    rows = paper_rows([spec], {"syn": _result({"J&F": 0.6}, 4, limit=4)}, "3b", shards=tmp_path)
    assert rows[0]["scored / expected"] == "4 / 6 (subset: no diff)" and rows[0]["diff"] is None
    full = paper_rows([spec], {"syn": _result({"J&F": 0.6}, 6, limit=10)}, "3b", shards=tmp_path)
    assert full[0]["scored / expected"] == "6 / 6" and full[0]["diff"] == -0.6
    header = next(csv.reader(io.StringIO(rows_csv(rows))))
    assert header[-2:] == ["unit", "scored / expected"]


def test_teacher_forced_numbers_are_labelled_where_they_are_read(tmp_path, capsys):
    from pixelqa.fit import print_summary, where_report
    from pixelqa.grid import load_grid, result_table

    print_summary({"train/loss": 1.0, "val/J&F": 0.5, "val/gen/J&F": 0.5, "val/qa_acc": 0.25})
    out = capsys.readouterr().out
    legend, summary = out.split("==== PixelQA fit summary ====")
    assert "val/*: teacher-forced" in legend and "val/gen/*: free generation" in legend
    assert summary.strip().splitlines()[-2:] == ["val/J&F: 0.5", "val/qa_acc: 0.25"]  # name: value lines only

    class Logger:
        run_id, experiment_id = "r", "1"

    args = [f"output_dir={tmp_path}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
    report = where_report(to_object(load_recipe(args)), args, Logger(), [])
    assert "teacher-forced J&F is the metric 0_J_and_F (also val/J_and_F)" in report

    path = tmp_path / "g.yaml"
    path.write_text("name: g\ngrid:\n  seed: [0]\nmetrics: ['val/J&F', 'val/gen/J&F', 'train/loss']\n")
    csv_text, md = result_table(load_grid(path), {"seed=0": {"val/J&F": 0.5, "val/gen/J&F": 0.5, "train/loss": 1}})
    assert csv_text.splitlines()[0] == "seed,val/J&F,val/gen/J&F,train/loss"  # keys stay what scripts read
    assert md.splitlines()[0] == "| seed | val/J&F (teacher-forced) | val/gen/J&F (free generation) | train/loss |"
    assert "teacher-forced: the model reads the reference answer" in md


def test_evaluate_logs_the_identity_of_the_shards_it_scored(trained, tmp_path):
    from mlflow import MlflowClient

    from pixelqa.data.layout import shard_dir
    from pixelqa.train.guards import shards_identity

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = _args(trained, "scored", f"ckpt={trained / 'base'}", "eval.scoring=teacher_forced")
    evaluate.run([*args, f"tracking.tracking_uri={uri}", f"tracking.artifact_location={tmp_path / 'art'}"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    identity = shards_identity(shard_dir(trained / "shards", "synthetic", "val"))
    assert identity and run.data.params["val_stream/manifest/synthetic/val"] == identity
