"""Bad recipes fail before any work (no model built, no shard built) with a message that says what to fix."""

import re

import pytest
import torch

from pixelqa import fit
from pixelqa.config import RecipeError


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    """Building the network would be 'work': make it impossible, so a test passes only by failing earlier."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the recipe error was found")

    monkeypatch.setattr("pixelqa.model.unipixel.UniPixel.__init__", refuse)


def _run(tmp_path, *args):
    return fit.run([f"data.shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}", "tracking=none", *args])


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'trainer.max_step'.*trainer.max_steps"):
        _run(tmp_path, "trainer.max_step=3")


def test_zero_steps_need_a_model_to_evaluate(tmp_path):
    with pytest.raises(RecipeError, match=r"trainer.max_steps=0: expected >= 1 \(or 0 with init_from"):
        _run(tmp_path, "trainer.max_steps=0")


def test_missing_shards_of_a_real_source(tmp_path):
    with pytest.raises(RecipeError, match=r"no shards in .*refcoco.*python -m pixelqa.data build refcoco"):
        _run(tmp_path, "data=stage2-mix")
    assert not (tmp_path / "shards").exists()


def test_absent_model_path(tmp_path):
    with pytest.raises(RecipeError, match=r"model.path='/nowhere/qwen'.*local Qwen2.5-VL directory"):
        _run(tmp_path, "model=unipixel-3b", "model.path=/nowhere/qwen")


def test_init_from_of_the_wrong_stage(tmp_path):
    ckpt = tmp_path / "s1.ckpt"
    torch.save({"pixelqa_stage": 1, "state_dict": {}}, ckpt)
    with pytest.raises(RecipeError, match="checkpoint of stage 1, but this is stage 3; expected a stage-2"):
        _run(tmp_path, f"init_from={ckpt}")
    with pytest.raises(RecipeError, match="not a checkpoint file"):
        _run(tmp_path, f"init_from={tmp_path / 'missing.ckpt'}")


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(RecipeError, match=r"ckpt=last: no checkpoint at .*last.ckpt"):
        _run(tmp_path, "ckpt=last")


def test_global_batch_not_divisible(tmp_path):
    with pytest.raises(
        RecipeError, match="data.global_batch_size=6 is not a multiple of data.batch_size x processes = 4 x 1"
    ):
        _run(tmp_path, "data.global_batch_size=6")


def test_cli_exits_with_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fit.main(["trainer.max_step=3", "tracking=none"])
    assert exc.value.code == 2
    assert "recipe error: command line: unknown key 'trainer.max_step'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("data.batch_size=0", "an integer >= 1"),
        ("data.batch_size=-1", "an integer >= 1"),
        ("data.global_batch_size=0", "null or an integer >= 1"),
        ("optim.lr=-1.0", "a learning rate >= 0"),
        ("optim.warmup_ratio=1.5", "a fraction in [0, 1)"),
        ("data.num_workers=-2", "an integer >= 0"),
    ],
)
def test_numbers_out_of_range_are_recipe_errors(tmp_path, arg, expected):
    key, value = arg.split("=")
    with pytest.raises(RecipeError, match=rf"{key}={value} is out of range; expected {re.escape(expected)}"):
        _run(tmp_path, arg)


@pytest.mark.parametrize(
    ("launcher", "named"),
    [
        (["launcher=slurm", "launcher.partition=gpu"], "launcher=slurm"),
        (["launcher=subprocess"], "launcher=subprocess"),
        (["launcher.partition=gpu"], "launcher.partition=gpu"),  # the default executor, a cluster key: not ignored
    ],
)
def test_fit_and_evaluate_refuse_a_launcher_pointing_to_a_one_cell_grid(tmp_path, capsys, launcher, named):
    from pixelqa import evaluate

    for entry in (fit.main, evaluate.main):
        with pytest.raises(SystemExit) as exit_info:
            entry([f"data.shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}", "tracking=none", *launcher])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"recipe error: {named}: ") and "python -m pixelqa.grid" in err and "one-cell" in err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_the_printed_commands_leave_out_launcher_arguments():
    cmd = fit.fit_command(["recipe=stage3", "launcher=slurm", "launcher.partition=gpu", "seed=1"], "ckpt=last")
    assert "launcher" not in cmd and cmd.endswith("-m pixelqa.fit recipe=stage3 seed=1 ckpt=last")


def test_a_base_qwen_folder_without_a_sam_checkpoint_warns_at_start(tmp_path, capsys):
    base = tmp_path / "qwen"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(AssertionError, match="model was built"):  # the warning comes before any work
        _run(tmp_path, "model=unipixel-3b", f"model.path={base}")
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert "model.mask_decoder.checkpoint is not set" in line and "random weights" in line


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("model.seg_head=bogus", "model.seg_head='bogus' is not valid; valid choices: released, token"),
        ("model.mask_decoder.propagation=sideways", "model.mask_decoder.propagation='sideways' is not valid"),
        ("optim.extra_groups=[lm_head]", "optim.extra_groups: ['lm_head'] are no parameter groups; valid choices:"),
    ],
)
def test_switch_values_and_groups_are_checked_before_any_work(tmp_path, arg, expected):
    with pytest.raises(RecipeError) as err:
        _run(tmp_path, arg)
    assert str(err.value).startswith(expected)


def test_fit_and_evaluate_check_the_launcher_once_each(tmp_path, monkeypatch):
    import pixelqa.preflight
    from pixelqa import evaluate

    calls = []
    check = pixelqa.preflight.check_launcher
    monkeypatch.setattr(pixelqa.preflight, "check_launcher", lambda recipe: calls.append(recipe) or check(recipe))
    with pytest.raises(AssertionError, match="model was built"):  # past every preflight check
        _run(tmp_path)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(AssertionError, match="model was built"):
        evaluate.run([f"data.shards={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}", "tracking=none"])
    assert len(calls) == 1
