"""The SLURM path up to the submission: the sbatch files a grid and a shard build generate, without a cluster.

`sbatch` and `srun` are stand-in scripts on PATH: `sbatch` keeps each submission file and answers with a job
id, as the real one does; nothing runs. The checks read the sbatch files and the pickled calls submitit would
run on the nodes.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import cloudpickle
import pytest

from pixelqa.data.__main__ import main as data_main
from pixelqa.grid import run_grid
from pixelqa.launch.executor import slurm_parameters
from pixelqa.launch.fit_job import FitJob, resume_args

SBATCH = """#!/bin/bash
n=$(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 4241)
n=$((n + 1))
echo "$n" > "$FAKE_SLURM/counter"
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder with stand-in `sbatch` / `srun` first on PATH; submission files are kept in it."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", "#!/bin/bash\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(bin_dir))
    return bin_dir


def _sbatch_options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M))


def _submitted(folder: Path, job_id: str):
    """The call submitit pickled for a job (what `python -m submitit.core._submit` runs on the node)."""
    (path,) = (folder / job_id).glob("*_submitted.pkl")
    return cloudpickle.loads(path.read_bytes())


GRID = """name: g
recipe: stage3
prerequisites:
  base: {recipe: stage3, overrides: [trainer.max_steps=1]}
init_from: base
overrides: [data.synthetic_train=8, data.synthetic_val=4]
grid:
  seed: [0, 1]
"""


def test_a_grid_on_slurm_submits_one_sbatch_per_run_with_dependencies_and_resources(
    tmp_path, fake_slurm, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text(GRID)
    launcher = [
        "launcher=slurm",
        "launcher.nodes=2",
        "launcher.gpus_per_node=4",
        "launcher.partition=gpu",
        "launcher.account=proj",
        "launcher.time_min=600",
        "launcher.setup=[module load cuda,source /opt/venv/bin/activate]",
    ]
    assert run_grid(tmp_path / "g.yaml", [f"data.shards={tmp_path / 'shards'}", *launcher]) == {}
    err = capsys.readouterr().err
    assert "is a local SQLite file" in err and "tracking.tracking_uri=http://" in err

    files = {int(p.stem.split("-")[1]): p.read_text() for p in fake_slurm.glob("sbatch-*.sh")}
    assert sorted(files) == [4242, 4243, 4244]  # base, then the two cells
    for job_id, text in files.items():
        opts = _sbatch_options(text)
        assert opts["nodes"] == "2" and opts["ntasks-per-node"] == "4" and opts["gpus-per-node"] == "4"
        assert opts["partition"] == "gpu" and opts["account"] == "proj" and opts["time"] == "600"
        assert opts["signal"] == "USR2@120" and "requeue" in opts
        if job_id == 4242:
            assert "dependency" not in opts
        else:
            assert opts["dependency"] == "afterok:4242" and opts["kill-on-invalid-dep"] == "yes"
        setup = text.index("module load cuda")
        assert setup < text.index("source /opt/venv/bin/activate") < text.index("srun")
        assert "-m submitit.core._submit" in text.split("srun", 1)[1]

    folder = tmp_path / "runs" / "grid" / "g" / "jobs"
    cell = _submitted(folder, "4244")
    assert isinstance(cell.function, FitJob) and cell.function.workdir == str(tmp_path)
    assert cell.function.needs == {"base": str(tmp_path / "runs/grid/g/base/job-status.json")}
    args = cell.args[0]
    assert "seed=1" in args and "tracking.run_name='seed=1'" in args
    assert "trainer.num_nodes=2" in args and "trainer.devices=4" in args  # Lightning must match the allocation
    assert "init_from=runs/grid/g/base/checkpoints/last.ckpt" in args
    assert cell.function.parent_run_id is not None

    # Without sacct the jobs' states are unknown: a rerun must not submit them a second time.
    run_grid(tmp_path / "g.yaml", [f"data.shards={tmp_path / 'shards'}", *launcher])
    assert len(list(fake_slurm.glob("sbatch-*.sh"))) == 3


def test_a_shard_build_on_slurm_is_one_array_and_a_verify_job_after_it(tmp_path, fake_slurm, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_main(
        ["build", "synthetic", "--out", "shards", "--split", "val", "--num-nodes", "3"]
        + ["launcher=slurm", "launcher.gpus_per_node=0", "launcher.array_parallelism=2", "launcher.time_min=30"]
    )
    files = {int(p.stem.split("-")[1]): p.read_text() for p in fake_slurm.glob("sbatch-*.sh")}
    assert sorted(files) == [4242, 4243]
    array, verify = _sbatch_options(files[4242]), _sbatch_options(files[4243])
    assert array["array"] == "0-2%2" and "gpus-per-node" not in array and array["time"] == "30"
    assert "dependency" not in array
    assert verify["dependency"] == "afterok:4242_0:4242_1:4242_2"
    folder = tmp_path / "shards" / ".jobs" / "build-synthetic-val" / "submitit"
    for i in range(3):
        task = _submitted(folder, f"4242_{i}")
        assert task.args == (i,) and task.function.num_nodes == 3
        assert "--node-rank" not in task.function.argv and "launcher=slurm" not in task.function.argv
    assert "submitted verify job 4243" in capsys.readouterr().out


def test_slurm_parameters_map_the_launcher_to_sbatch_options():
    from pixelqa.config import load_recipe

    launcher = load_recipe(["launcher=slurm", "launcher.mem_gb=64", "launcher.qos=high"]).launcher
    params = slurm_parameters(launcher, "job", dependencies=["1", "2"])
    assert params["mem"] == "65536MB" and params["qos"] == "high" and params["ntasks_per_node"] == 8
    assert params["additional_parameters"]["dependency"] == "afterok:1:2"


def test_a_requeued_fit_job_resumes_from_last_ckpt_only_when_there_is_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["recipe=stage3", "output_dir=out", "ckpt=none"]
    job = FitJob("cell", tmp_path, tmp_path / "status.json")
    again = job.checkpoint(args)  # what submitit pickles when SLURM preempts the job
    assert again.function is job and again.kwargs == {"resume": True}
    assert resume_args(again.args[0]) == ["recipe=stage3", "output_dir=out"]  # nothing to resume: fresh start
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_args(args) == ["recipe=stage3", "output_dir=out", "ckpt=last"]


@pytest.mark.parametrize("env", [{"LOCAL_RANK": "1"}, {"RANK": "3"}, {"NODE_RANK": "1", "LOCAL_RANK": "0"}])
def test_a_rank_lightning_starts_inside_a_job_writes_no_status(tmp_path, monkeypatch, env):
    # Lightning's DDP launcher re-runs the job's command for ranks 1..n-1 with these variables set, while submitit's
    # environment (inherited) still says global rank 0: only the process it started from may record the job's state
    import pixelqa.fit
    from pixelqa.launch.status import job_identity

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pixelqa.fit, "run", lambda args, parent_run_id=None: {"val/J&F": 0.5})
    FitJob("cell", tmp_path, tmp_path / "rank0.json")(["recipe=stage3"])
    assert job_identity()["rank"] == 0 and json.loads((tmp_path / "rank0.json").read_text())["state"] == "DONE"
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert job_identity()["rank"] != 0
    FitJob("cell", tmp_path, tmp_path / "other.json")(["recipe=stage3"])
    assert not (tmp_path / "other.json").exists()
