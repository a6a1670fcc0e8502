"""Wall times are `time/*` metrics, never in a score namespace (`val/...`, `synthetic/...`), and a grid's default
result table (no `metrics:` list) leaves them out: it compares scores, and times differ on every rerun."""

from __future__ import annotations

import csv
import io

from pixelqa.config import load_recipe, to_object
from pixelqa.eval.runner import EvalResult
from pixelqa.grid import cell_id, load_grid, result_table

RESULT = {
    "val/J&F": 0.25,
    "val/gen/J&F": 0.2,
    "train/loss": 1.5,
    "time/fit_s": 150.0,
    "time/val_gen_s": 7.0,
    "time/data_wait_share": 0.01,
}


def _header(grid, results) -> list[str]:
    csv_text, md = result_table(grid, results)
    header = next(csv.reader(io.StringIO(csv_text)))
    return header, md


def test_the_default_grid_table_leaves_wall_times_out(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ngrid:\n  seed: [0, 1]\n")  # no metrics: every metric the cells logged
    grid = load_grid(path)
    # a state.json of the version before the rename holds `val/gen/time_s`: a time too, not a free-generation score
    older = {**RESULT, "val/gen/time_s": 7.0, "untrained/val/gen/time_s": 6.0}
    results = {cell_id({"seed": 0}): RESULT, cell_id({"seed": 1}): older}
    header, md = _header(grid, results)
    assert header == ["seed", "train/loss", "val/J&F", "val/gen/J&F"]
    assert "time" not in md


def test_a_metrics_list_may_still_name_a_time(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ngrid:\n  seed: [0]\nmetrics: ['val/J&F', 'time/fit_s']\n")
    header, md = _header(load_grid(path), {cell_id({"seed": 0}): RESULT})
    assert header == ["seed", "val/J&F", "time/fit_s"]
    assert "| time/fit_s |" in md.splitlines()[0]  # no scoring label on a time


def test_fit_logs_the_generation_pass_time_as_a_time_metric(monkeypatch):
    import pixelqa.eval.synthetic_generate as sg

    def scored(model, recipe, **kwargs):  # no model needed: the pass's scores, as the protocol returns them
        return EvalResult({"gen/J&F": 0.5, "gen/qa_acc": 0.25, "gen/samples": 2.0}, [])

    monkeypatch.setattr(sg, "evaluate_synthetic_generate", scored)
    recipe = to_object(load_recipe(["recipe=stage3"]))  # the demo: eval.scoring=both on synthetic validation
    after = sg.after_fit_generation(None, recipe)
    assert set(after) == {"val/gen/J&F", "val/gen/qa_acc", "val/gen/samples", "time/val_gen_s"}
    assert after["time/val_gen_s"] >= 0.0
    untrained = sg.after_fit_generation(None, recipe, prefix="untrained/")
    assert set(untrained) == {
        "untrained/val/gen/J&F",
        "untrained/val/gen/qa_acc",
        "untrained/val/gen/samples",
        "time/untrained_val_gen_s",
    }
