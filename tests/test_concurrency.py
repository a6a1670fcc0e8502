"""Two processes writing one folder at once (pixelqa.locks and the atomic writes): the second is refused in one
line naming the first, or its write fails cleanly; nothing is mixed, replaced without asking, or half-written.

Most tests hold a lock in a small helper process (another process, as the kernel sees it: a lock is re-entrant
within one) and run the command here; the suite's records are written by two processes for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
from fixtures_video import build_revos

from pixelqa.data.__main__ import main as data_main
from pixelqa.data.shards import build_shards, sha256_file
from pixelqa.eval.suite import BenchmarkSpec, SuiteError, read_records_file, run_benchmark

REVOS = BenchmarkSpec("revos", "revos", "valid", "revos", "Tab. 1", {"3b": {"J&F": 62.1}})
CKPT_A = {"checkpoint_sha256": "a" * 64}
CKPT_B = {"checkpoint_sha256": "b" * 64}

# Holds a lock file as any pixelqa process does (flock, who on the first line) until its stdin closes or it is
# killed; the standard library only, so that it starts in milliseconds and means the same to old and new code.
RAW_HOLDER = """
import fcntl, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since now\\ncommand: the holder\\n".encode())
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_elsewhere(lock_file: Path, code: str = RAW_HOLDER) -> Iterator[subprocess.Popen]:
    """`lock_file` held by another process for the block (its folder made)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _holder_named(msg: str, proc: subprocess.Popen) -> bool:
    return f"pid {proc.pid} on host {socket.gethostname()}" in msg


# ------------------------------------------------------------------------------------------------ pixelqa.locks


def test_a_held_folder_refuses_a_second_process_naming_it_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from pixelqa.locks import FolderLocked, folder_lock, hold, holder, lock_path

    run = tmp_path / "run"
    code = (
        "import sys\nfrom pathlib import Path\nfrom pixelqa.locks import hold\n"
        "hold(Path(sys.argv[1]).parent, 'fit')\nprint('ready', flush=True)\nsys.stdin.read()\n"
    )
    with held_elsewhere(lock_path(run, "fit"), code) as proc:
        with pytest.raises(FolderLocked) as err, folder_lock(run, "fit", advice="wait for it, or use another folder"):
            pass
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{run} is in use by pid {proc.pid} on host {socket.gethostname()}")
        assert " since " in msg and "-c" in msg and msg.endswith("; wait for it, or use another folder")
        assert isinstance(err.value, ValueError)  # a RecipeError: every CLI prints it as one line, status 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the kernel dropped the dead holder's lock: the file left behind blocks nobody
        assert lock_path(run, "fit").is_file() and holder(lock_path(run, "fit")) is None
        with folder_lock(run, "fit"):
            with folder_lock(run, "fit"):  # re-entrant within a process
                assert f"pid {os.getpid()}" in holder(lock_path(run, "fit"))
            assert holder(lock_path(run, "fit")) is not None  # the outer block still holds it
        hold(run, "grid")  # held for the process's life (released below only to keep the test process clean)
    from pixelqa.locks import release

    assert holder(lock_path(run, "fit")) is None
    release(lock_path(run, "grid"))


# ------------------------------------------------------------------------------------------------ suite


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conc")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    return root / "shards"


SLOW_SCORER = """
import sys, time
from pathlib import Path
from pixelqa.eval.suite import BenchmarkSpec, run_benchmark
spec = BenchmarkSpec("revos", "revos", "valid", "revos", "Tab. 1", {})
go = Path(sys.argv[3])
def answer(request):
    print("answering", flush=True)  # the header is written: the file is being appended to now
    while not go.exists():
        time.sleep(0.05)
    return ("no idea", [])
print(run_benchmark(spec, answer, sys.argv[1], sys.argv[2], fingerprint={"checkpoint_sha256": "a" * 64}), flush=True)
"""


def test_two_processes_scoring_into_one_records_file_never_mix_their_records(shards, tmp_path):
    # report #1: the second run rewrote the header of the file the first appended to, then both appended
    out, go = tmp_path / "out", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SCORER, str(shards), str(out), str(go)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "answering"
        with pytest.raises(SuiteError) as err:  # another checkpoint, the same folder, while the first scores
            run_benchmark(REVOS, lambda r: ("other", []), shards, out, fingerprint=CKPT_B)
        msg = str(err.value)
        assert "\n" not in msg and _holder_named(msg, proc) and "score into another output_dir" in msg
        go.touch()
        assert proc.stdout.read().split()[-1] == "3" and proc.wait(timeout=120) == 0
    finally:
        go.touch()
        proc.kill()
    header, records = read_records_file(out / "revos" / "records.rank0.jsonl")
    lines = (out / "revos" / "records.rank0.jsonl").read_text().splitlines()
    assert header == {**json.loads(lines[0])["fingerprint"]} and header["checkpoint_sha256"] == "a" * 64
    assert len(lines) == 4 and {r["text"] for r in records.values()} == {"no idea"}


def test_a_sample_on_two_lines_of_one_records_file_is_reported_not_dropped(tmp_path):
    path = tmp_path / "records.rank0.jsonl"
    rec = {"key": "v1-0", "index": 0, "text": "a"}
    path.write_text("\n".join(json.dumps(x) for x in [{"fingerprint": {}}, rec, {**rec, "text": "b"}]) + "\n")
    with pytest.raises(SuiteError, match=r"sample 'v1-0' on lines 2 and 3: two runs appended to this file at once"):
        read_records_file(path)


@pytest.fixture
def stub_model(monkeypatch):
    """No network is built: the lock is what is under test, not the model."""
    import pixelqa.eval.generation as gen
    import pixelqa.eval.model_loading as ml

    calls = {"load": 0}

    def load(recipe, ckpt_path):
        calls["load"] += 1
        return torch.nn.Identity()

    monkeypatch.setattr(ml, "load_model", load)
    monkeypatch.setattr(gen, "default_answer_fn", lambda model, cap=None: (lambda r: ("x", []), "chat (stub)"))
    return calls


def test_a_suite_into_an_output_dir_another_run_writes_is_one_line_before_any_work(
    shards, tmp_path, stub_model, capsys
):
    from pixelqa.evaluate import main

    suite_dir = tmp_path / "run" / "suite-paper"
    args = ["suite=paper", "suite.only=revos", f"data.shards={shards}", f"output_dir={tmp_path / 'run'}"]
    with held_elsewhere(suite_dir / ".pixelqa-suite.lock") as proc, pytest.raises(SystemExit) as err:
        main([*args, "tracking.enabled=false"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1 and msg.startswith(f"recipe error: {suite_dir} is in use")
    assert _holder_named(msg, proc) and "wait for it to finish, or score into another output_dir" in msg
    assert stub_model["load"] == 0 and not (suite_dir / "revos").exists()


def _ranks_worker(rank: int, world: int, out: str, init: str) -> None:
    import torch.distributed as dist

    from pixelqa.eval.suite_runner import results_lock

    torch.set_num_threads(1)  # no OpenMP pool in a forked worker
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        with results_lock(Path(out), rank):
            outcome = "ok"
        dist.barrier()
    except SuiteError as err:
        outcome = f"refused: {err}"
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("other_run", [False, True])
def test_the_ranks_of_one_suite_run_share_its_folder_and_all_refuse_another_runs(tmp_path, other_run):
    out = tmp_path / "suite-paper"
    out.mkdir()
    with held_elsewhere(out / ".pixelqa-suite.lock") if other_run else nullcontext() as proc:
        # fork: the workers inherit the imports (spawn would re-import torch in each)
        args = (2, str(out), str(tmp_path / f"init-{other_run}"))
        torch.multiprocessing.start_processes(_ranks_worker, args=args, nprocs=2, join=True, start_method="fork")
    outcomes = [(out / f"rank{r}.txt").read_text() for r in (0, 1)]
    if not other_run:
        assert outcomes == ["ok", "ok"]
        return
    assert outcomes[0].startswith(f"refused: {out} is in use") and _holder_named(outcomes[0], proc)
    assert outcomes[1].startswith(f"refused: {out} is in use by another run")


# ------------------------------------------------------------------------------------------------ grid


def test_a_second_invocation_of_a_grid_is_refused_before_any_cell_and_status_still_reads(tmp_path, monkeypatch, capsys):
    import pixelqa.fit
    from pixelqa.grid import main

    calls: list[list[str]] = []
    monkeypatch.setattr(pixelqa.fit, "run", lambda args, parent_run_id=None: calls.append(args) or {"val/J&F": 0.5})
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\ngrid:\n  seed: [0, 1]\n")
    args = [str(grid_file), "tracking=none", "trainer.max_steps=1", f"output_dir={tmp_path / 'grids'}"]
    folder = tmp_path / "grids" / "g"
    with held_elsewhere(folder / ".pixelqa-grid.lock") as proc:
        for extra in ([], ["--collect"]):
            with pytest.raises(SystemExit) as err:
                main([*args, *extra])
            msg = capsys.readouterr().err
            assert err.value.code == 2 and msg.count("\n") == 1 and msg.startswith(f"grid error: {folder} is in use")
            assert _holder_named(msg, proc) and "wait for it to finish (--status shows its cells)" in msg
        main([*args, "--status"])  # a read: no lock
        assert "seed=0" in capsys.readouterr().out
    assert calls == [] and not (folder / "state.json").exists()
    main(args)  # once the other invocation is gone
    assert len(calls) == 2 and (folder / "results.csv").is_file()


def test_a_damaged_state_file_is_one_line(tmp_path, capsys):
    from pixelqa.grid import main

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\ngrid:\n  seed: [0]\n")
    (tmp_path / "grids" / "g").mkdir(parents=True)
    (tmp_path / "grids" / "g" / "state.json").write_text('{"results": {"seed=0": ')  # an older torn write
    with pytest.raises(SystemExit) as err:
        main([str(grid_file), "tracking=none", f"output_dir={tmp_path / 'grids'}"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1 and "state.json is not valid JSON" in msg


# ------------------------------------------------------------------------------------------------ shard builds

BUILD = ["build", "synthetic", "--split", "train", "--max-samples", "4", "--max-count", "2", "--quiet"]


def test_a_build_of_another_num_nodes_is_refused_while_one_runs_and_nodes_of_one_build_share(tmp_path, capsys):
    # report #4: locks named per (node, num_nodes) let a 2-node build overwrite a 1-node build's shards
    out = tmp_path / "shards"
    folder = out / "synthetic" / "train"
    with held_elsewhere(folder / ".build-node000-of001.lock") as proc:
        for wait in ([], ["--wait"]):  # waiting would not help: what it leaves is another layout
            with pytest.raises(SystemExit) as err:
                data_main([*BUILD, "--out", str(out), "--num-nodes", "2", "--node-rank", "0", *wait])
            msg = capsys.readouterr().err
            assert err.value.code == 2 and msg.count("\n") == 1 and "Traceback" not in msg
            assert msg.startswith(f"error: {folder} is being built by pid {proc.pid}") and "--num-nodes 1" in msg
    assert not list(folder.glob("*.tar*"))
    with held_elsewhere(folder / ".build-node000-of002.lock") as proc:  # node 0 of a 2-node build runs
        data_main([*BUILD, "--out", str(out), "--num-nodes", "2", "--node-rank", "1"])  # its other node: welcome
        with pytest.raises(SystemExit) as err:  # the same node again: refused, as before
            data_main([*BUILD, "--out", str(out), "--num-nodes", "2", "--node-rank", "0"])
        msg = capsys.readouterr().err
        assert err.value.code == 2 and _holder_named(msg, proc) and "--wait" in msg  # data build has it
    assert (folder / "manifest-node001-of002.json").is_file()


def test_a_build_of_another_num_nodes_is_refused_once_one_finished(tmp_path, capsys):
    out = tmp_path / "shards"
    folder = out / "synthetic" / "train"
    data_main([*BUILD, "--out", str(out)])
    before = {p.name: sha256_file(p) for p in folder.glob("*.tar")}
    with pytest.raises(SystemExit) as err:
        data_main([*BUILD, "--out", str(out), "--num-nodes", "2", "--node-rank", "1"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1 and "holds a build with --num-nodes 1 (manifest.json)" in msg
    assert {p.name: sha256_file(p) for p in folder.glob("*.tar")} == before


def test_a_mixture_refused_by_a_running_build_is_told_what_it_can_do(tmp_path, capsys):
    # report #8: the advice named --wait, which `data mixture` does not take
    mix = tmp_path / "one.yaml"
    mix.write_text("sources:\n  - {name: synthetic, split: val}\n")
    out = tmp_path / "shards"
    with held_elsewhere(out / "synthetic" / "val" / ".build-node000-of001.lock"), pytest.raises(SystemExit) as err:
        data_main(["mixture", str(mix), "--root", str(tmp_path), "--out", str(out), "--max-samples", "3", "--quiet"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.count("\n") == 1 and "--wait" not in msg
    assert "rerun this mixture command" in msg


def test_a_caller_without_a_wait_flag_passes_its_own_advice(tmp_path):
    from pixelqa.data.shards import BuildLocked

    folder = tmp_path / "synthetic" / "val"
    with held_elsewhere(folder / ".build-node000-of001.lock"), pytest.raises(BuildLocked) as err:
        build_shards("synthetic", ".", tmp_path, "val", max_samples=2, progress=False, advice="rerun fit once done")
    assert str(err.value).endswith("; rerun fit once done") and "--wait" not in str(err.value)


# ------------------------------------------------------------------------------------------------ atomic writes


def _finish_theirs_before_rename(monkeypatch, target: Path) -> None:
    """Another process's write of `target` completes just before this one renames its folder there (the window
    between a check and the rename)."""
    real_rename, real_replace = os.rename, os.replace

    def theirs_first(real):
        def rename(src, dst, *a, **k):
            if Path(dst) == target and Path(src).name.startswith(f".{target.name}.tmp~"):
                target.mkdir(exist_ok=True)
                (target / "theirs.txt").write_text("theirs")
            return real(src, dst, *a, **k)

        return rename

    monkeypatch.setattr(os, "rename", theirs_first(real_rename))
    monkeypatch.setattr(os, "replace", theirs_first(real_replace))


def test_export_never_replaces_an_out_another_export_finished_meanwhile(tmp_path, monkeypatch, capsys):
    # report #5: both exports printed "exported" and OUT held one model; no --overwrite had been given
    from types import SimpleNamespace

    from pixelqa import export

    out = tmp_path / "OUT"
    saver = SimpleNamespace(save_pretrained=lambda folder: Path(folder, "tokenizer.json").write_text("{}"))

    def theirs_done_meanwhile(folder: str) -> None:  # while this export writes, another one finishes OUT
        out.mkdir()
        (out / "model.safetensors").write_text("theirs")
        saver.save_pretrained(folder)

    processor = SimpleNamespace(
        tokenizer=SimpleNamespace(save_pretrained=theirs_done_meanwhile),
        image_processor=saver,
        video_processor=saver,
        chat_template=None,
    )
    model = SimpleNamespace(processor=processor, tokenizer=SimpleNamespace(chat_template=None))
    monkeypatch.setattr(export, "load_any", lambda *a, **k: model)
    monkeypatch.setattr(export, "release_state_dict", lambda m, dtype: ({"w": torch.zeros(1)}, []))
    monkeypatch.setattr(export, "release_config", lambda m, tied, dtype: {})
    assert export.main([str(tmp_path / "run.ckpt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was written by another process meanwhile" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir() if p.name != "OUT"] == []  # no temporary left


def test_a_folder_written_between_the_check_and_the_rename_is_one_error_not_errno_39(tmp_path, monkeypatch):
    # report #5 (predict): OSError: [Errno 39] Directory not empty, as a traceback
    from pixelqa.files import atomic_folder
    from pixelqa.predict import outputs
    from pixelqa.predict.errors import PredictInputError

    target = tmp_path / "OUT"
    _finish_theirs_before_rename(monkeypatch, target)
    with pytest.raises(FileExistsError, match="written by another process meanwhile"):
        with atomic_folder(target) as tmp:
            (tmp / "ours.txt").write_text("ours")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    (target / "theirs.txt").unlink()
    target.rmdir()
    monkeypatch.setattr(outputs, "_write", lambda pred, out, prompt_args, progress: {})
    with pytest.raises(PredictInputError, match=r"^--out: .*written by another process meanwhile"):
        outputs.write_outputs(None, target)
    assert [p.name for p in tmp_path.iterdir()] == ["OUT"]


def test_write_text_atomic_with_two_writers_of_one_file(tmp_path, monkeypatch):
    # report #7: one fixed `<name>.partial` temporary: a writer renamed the other's half-written one into place,
    # and the other's rename then failed with FileNotFoundError
    from pixelqa.data import shards

    path = tmp_path / "state.json"
    real = Path.write_text
    inside: list[Path] = []

    def other_writer_meanwhile(self: Path, text: str, *a, **k) -> int:
        n = real(self, text, *a, **k)
        if not inside:  # the first writer's temporary is written: the second writes the whole file now
            inside.append(self)
            shards.write_text_atomic(path, "second\n")
        return n

    monkeypatch.setattr(Path, "write_text", other_writer_meanwhile)
    shards.write_text_atomic(path, "first\n")
    assert path.read_text() == "first\n" and inside[0] != path.with_name("state.json.partial")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_suite_result_json_with_two_writers(tmp_path, monkeypatch):
    from pixelqa.eval import suite

    path = tmp_path / "result.json"
    real = Path.write_text
    inside: list[Path] = []

    def other_writer_meanwhile(self: Path, text: str, *a, **k) -> int:
        n = real(self, text, *a, **k)
        if not inside:
            inside.append(self)
            suite._write_json(path, {"by": "second"})
        return n

    monkeypatch.setattr(Path, "write_text", other_writer_meanwhile)
    suite._write_json(path, {"by": "first"})
    assert json.loads(path.read_text()) == {"by": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# ------------------------------------------------------------------------------------------------ fit


def test_a_fit_into_an_output_dir_another_fit_writes_is_one_line_before_any_work(tmp_path, capsys):
    from pixelqa.fit import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step000005.ckpt").write_bytes(b"the other run's")  # not to be set aside or resumed
    args = ["recipe=stage3", f"output_dir={run}", f"data.shards={tmp_path / 'shards'}", "tracking.enabled=false"]
    with held_elsewhere(run / ".pixelqa-fit.lock") as proc, pytest.raises(SystemExit) as err:
        main([*args, "trainer.max_steps=1"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and f"{run} is in use by" in msg and _holder_named(msg, proc)
    assert "give this run another output_dir=" in msg.splitlines()[-1]
    assert sorted(p.name for p in run.iterdir()) == [".pixelqa-fit.lock", "checkpoints"]  # nothing written, moved
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step000005.ckpt"]
    assert not (tmp_path / "shards").exists()  # refused before the data were touched
