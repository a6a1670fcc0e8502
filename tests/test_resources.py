"""Where recipes, dataset cards and grids are found (pixelqa.resources): a clone, the environment variables, and the
copies a wheel installs (a non-editable install run from a folder of the user's own); fit's banner reads the recipe
file that was loaded, wherever it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pixelqa.config import load_recipe, to_object

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("recipes", "datasets", "experiments")
# What a wheel is built from (the rest of the repository is not needed, and the build writes build/ and *.egg-info
# beside its sources: a copy keeps them out of the repository).
BUILD_INPUTS = ("pixelqa", *KINDS, "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")
TIMEOUT_S = 300


def repo_yaml(kind: str) -> set[str]:
    """The YAML files of a top-level folder, relative to it."""
    return {p.relative_to(ROOT / kind).as_posix() for p in (ROOT / kind).rglob("*.yaml")}


# --------------------------------------------------------------------------------------- lookup order


def test_a_clone_finds_its_own_folders(monkeypatch):
    from pixelqa.resources import resource_dir

    monkeypatch.delenv("PIXELQA_RECIPES", raising=False)
    monkeypatch.delenv("PIXELQA_HOME", raising=False)
    for kind in KINDS:
        assert resource_dir(kind) == ROOT / kind


def test_environment_variables_come_first_and_a_wrong_one_is_named(monkeypatch, tmp_path):
    from pixelqa.config import RecipeError, recipes_dir
    from pixelqa.data.registry import datasets_dir
    from pixelqa.resources import ResourceNotFoundError, resource_dir

    home = tmp_path / "home"
    for kind in KINDS:
        shutil.copytree(ROOT / kind, home / kind)
    monkeypatch.delenv("PIXELQA_RECIPES", raising=False)
    monkeypatch.setenv("PIXELQA_HOME", str(home))
    assert [resource_dir(k) for k in KINDS] == [home / k for k in KINDS]
    assert recipes_dir() == home / "recipes" and datasets_dir() == home / "datasets"
    other = tmp_path / "other_recipes"
    shutil.copytree(ROOT / "recipes", other)
    monkeypatch.setenv("PIXELQA_RECIPES", str(other))  # the recipes folder itself, before PIXELQA_HOME
    assert recipes_dir() == other and datasets_dir() == home / "datasets"

    monkeypatch.setenv("PIXELQA_RECIPES", str(tmp_path / "typo"))
    with pytest.raises(RecipeError, match=r"PIXELQA_RECIPES=.*typo: no such folder"):
        load_recipe(["recipe=stage3"])
    monkeypatch.delenv("PIXELQA_RECIPES")
    monkeypatch.setenv("PIXELQA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(ResourceNotFoundError, match=r"PIXELQA_HOME=.*nowhere: no folder .*datasets"):
        datasets_dir()


def test_the_suites_and_the_data_mixtures_follow_the_recipes_folder(monkeypatch, tmp_path):
    from pixelqa.data.mixture import load_mixture
    from pixelqa.eval.suite import load_suite

    mine = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes", mine)
    (mine / "suite" / "mine.yaml").write_text((ROOT / "recipes" / "suite" / "paper.yaml").read_text())
    (mine / "data" / "mine.yaml").write_text("sources:\n  - {name: synthetic, split: train, repeat: 3}\n")
    monkeypatch.setenv("PIXELQA_RECIPES", str(mine))
    assert load_suite("mine").benchmarks  # was: recipes/suite beside the package only
    assert [(e.name, e.repeat) for e in load_mixture("mine")] == [("synthetic", 3.0)]


def fake_install(root: Path, kinds: tuple[str, ...] = KINDS) -> Path:
    """A package folder as a wheel lays it out under `root` (prefix/lib/python3.X/site-packages/pixelqa), with the
    copies of `kinds` in prefix/share/pixelqa; and a `datasets/` folder in site-packages, as Hugging Face's
    `datasets` package leaves there (not PixelQA's cards)."""
    site = root / "lib" / "python3.11" / "site-packages"
    (site / "pixelqa").mkdir(parents=True)
    (site / "datasets").mkdir()
    (site / "datasets" / "arrow.yaml").write_text("a: 1\n")
    for kind in kinds:
        shutil.copytree(ROOT / kind, root / "share" / "pixelqa" / kind)
    return site / "pixelqa"


def test_an_installed_package_finds_the_wheels_copies(monkeypatch, tmp_path):
    from pixelqa import resources

    package = fake_install(tmp_path / "prefix")
    monkeypatch.setattr(resources, "package_dir", lambda: package)
    monkeypatch.delenv("PIXELQA_RECIPES", raising=False)
    monkeypatch.delenv("PIXELQA_HOME", raising=False)
    for kind in KINDS:
        assert resources.resource_dir(kind) == tmp_path / "prefix" / "share" / "pixelqa" / kind


def test_without_any_copy_one_line_says_where_it_looked(monkeypatch, tmp_path, capsys):
    from pixelqa import resources
    from pixelqa.config import RecipeError
    from pixelqa.data.cli import main as data_main

    package = fake_install(tmp_path / "prefix", kinds=())
    monkeypatch.setattr(resources, "package_dir", lambda: package)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(sys, "exec_prefix", str(tmp_path / "prefix"))
    monkeypatch.delenv("PIXELQA_RECIPES", raising=False)
    monkeypatch.delenv("PIXELQA_HOME", raising=False)
    with pytest.raises(RecipeError) as err:
        load_recipe(["recipe=stage3"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("no recipes/ folder found")
    assert str(package.parent) in message and "share/pixelqa/recipes" in message
    assert "PIXELQA_HOME=DIR" in message and "pip install -e" in message
    with pytest.raises(SystemExit) as stop:
        data_main(["cards"])  # printed nothing and exited 0
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: no datasets/ folder found") and "\n" not in line


# --------------------------------------------------------------------------------------- fit's banner


def custom_recipe(folder: Path, name: str, header: str) -> Path:
    """A copy of recipes/stage3.yaml under another name and folder, with its own header comment."""
    folder.mkdir(parents=True, exist_ok=True)
    body = [line for line in (ROOT / "recipes" / "stage3.yaml").read_text().splitlines() if not line.startswith("#")]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join([header, *body]) + "\n")
    return path


def test_fit_banner_reads_a_recipe_given_as_a_path(tmp_path, capsys):
    from pixelqa.fit import banner
    from pixelqa.fit import main as fit_main

    path = custom_recipe(tmp_path / "mine", "custom", "# my own stage 3, from a folder of my own")
    text = banner(to_object(load_recipe([f"recipe={path}"])))  # FileNotFoundError: <repo>/recipes/custom.yaml
    assert "EMBEDDED DEMO" in text and "# my own stage 3, from a folder of my own" in text
    fit_main([f"recipe={path}", "--print-config"])
    assert "name: custom" in capsys.readouterr().out
    # a recipe named like one of the repository's: the header of the file loaded, not of recipes/stage3.yaml
    same = custom_recipe(tmp_path / "other", "stage3", "# not the repository's stage 3")
    text = banner(to_object(load_recipe([f"recipe={same}"])))
    assert "# not the repository's stage 3" in text and "Paper setting" not in text
    assert "Paper setting" in banner(to_object(load_recipe(["recipe=stage3"])))
    gone = custom_recipe(tmp_path / "gone", "vanishing", "# soon gone")
    recipe = to_object(load_recipe([f"recipe={gone}"]))
    gone.unlink()
    assert "# see " in banner(recipe)  # a file that went away: no header, no traceback


# --------------------------------------------------------------------------------------- a real wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this project, built offline from a copy of its sources."""
    top = tmp_path_factory.mktemp("wheel")
    src = top / "src"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*cmd, "-w", str(top / "dist"), str(src)], check=True, timeout=TIMEOUT_S, env=pip_env())
    (found,) = (top / "dist").glob("pixelqa-*.whl")
    return found


def pip_env() -> dict[str, str]:
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def env_packages() -> list[str]:
    """What this environment's site-packages holds (its pixelqa install among it: editable or not)."""
    folders = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return sorted(str(p) for folder in folders for p in Path(folder).iterdir() if "pixelqa" in p.name.lower())


def install(wheel: Path, how: str, where: Path) -> Path:
    """Install the wheel with `pip install --prefix` or `--target`; returns the folder holding `pixelqa/`.

    --ignore-installed: without it `--prefix` first uninstalls the pixelqa installed in this environment (the
    repository's editable install) or, at the same version, installs nothing."""
    before = env_packages()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-warn-script-location"]
    cmd += ["--ignore-installed", f"--{how}", str(where), str(wheel)]
    subprocess.run(cmd, check=True, timeout=TIMEOUT_S, env=pip_env())
    assert env_packages() == before, "installing the wheel elsewhere changed this environment's pixelqa install"
    if how == "target":
        return where
    (site,) = where.glob("lib/python*/site-packages")
    return site


def run_installed(site: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -S ARGS` from `cwd` seeing the installed copy (first) and this environment's dependencies, never
    the repository: -S leaves out site-packages' .pth files, among them the editable install's finder."""
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIXELQA_") and k != "PYTHONPATH"}
    full = {**clean, "PYTHONPATH": os.pathsep.join([str(site), *deps]), "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def test_a_wheel_installed_elsewhere_runs_fit_and_data_from_a_users_folder(wheel, tmp_path):
    site = install(wheel, "prefix", tmp_path / "prefix")
    cwd = tmp_path / "work"
    cwd.mkdir()
    where = run_installed(site, cwd, "-c", "import pixelqa, sys; print(pixelqa.__file__); print(*sys.path, sep='\\n')")
    assert where.returncode == 0, where.stderr
    first, *path = where.stdout.splitlines()
    assert Path(first).resolve() == (site / "pixelqa" / "__init__.py").resolve()
    assert not any(Path(p).resolve() == ROOT for p in path if p)  # the repository is not importable
    # every YAML file of recipes/, datasets/ and experiments/ is shipped
    share = tmp_path / "prefix" / "share" / "pixelqa"
    for kind in KINDS:
        assert {p.relative_to(share / kind).as_posix() for p in (share / kind).rglob("*.yaml")} == repo_yaml(kind)

    fit = run_installed(site, cwd, "-m", "pixelqa.fit", "recipe=stage3", "--print-config")
    assert fit.returncode == 0, fit.stderr  # was: recipe error: recipe=stage3: no such recipe; valid choices:
    assert "name: stage3" in fit.stdout and "preset: tiny" in fit.stdout
    cards = run_installed(site, cwd, "-m", "pixelqa.data", "cards")
    assert cards.returncode == 0, cards.stderr
    assert {line.split()[0] for line in cards.stdout.splitlines()} == {Path(p).stem for p in repo_yaml("datasets")}
    mixture = run_installed(site, cwd, "-m", "pixelqa.data", "mixture", "recipe=sft1m")
    assert mixture.returncode == 0, mixture.stderr
    assert "total effective samples per epoch: 5,940,000" in mixture.stdout
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written into the user's folder


def test_a_wheel_installed_with_target_and_without_its_copies(wheel, tmp_path):
    site = install(wheel, "target", tmp_path / "target")
    cwd = tmp_path / "work"
    cwd.mkdir()
    cards = run_installed(site, cwd, "-m", "pixelqa.data", "cards")
    assert cards.returncode == 0 and "synthetic" in cards.stdout, cards.stderr  # target/share/pixelqa/datasets
    shutil.rmtree(site / "share")
    if any((Path(p) / "share" / "pixelqa").exists() for p in (sys.base_prefix, sys.base_exec_prefix)):
        pytest.skip("this interpreter's prefix holds a share/pixelqa of its own")
    fit = run_installed(site, cwd, "-m", "pixelqa.fit", "recipe=stage3", "--print-config")
    assert fit.returncode == 2 and fit.stdout == ""
    (line,) = fit.stderr.splitlines()
    assert line.startswith("recipe error: no recipes/ folder found") and "PIXELQA_HOME=DIR" in line
    cards = run_installed(site, cwd, "-m", "pixelqa.data", "cards")
    assert cards.returncode == 2 and "error: no datasets/ folder found" in cards.stderr
    # PIXELQA_HOME names a clone: everything is found there
    clone = {"PIXELQA_HOME": str(ROOT)}
    fit = run_installed(site, cwd, "-m", "pixelqa.fit", "recipe=stage3", "--print-config", env=clone)
    assert fit.returncode == 0 and "name: stage3" in fit.stdout, fit.stderr


def test_a_shipped_grid_is_found_from_any_folder(tmp_path, monkeypatch):
    from pixelqa.grid import grid_file, load_grid

    monkeypatch.chdir(tmp_path)  # no experiments/ here
    name = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))[0]
    for spelling in (f"experiments/{name}", name):
        assert grid_file(spelling).name == name and load_grid(spelling).name
    with pytest.raises(FileNotFoundError, match="grid file experiments/none.yaml does not exist"):
        grid_file("experiments/none.yaml")
