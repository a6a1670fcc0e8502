"""Where PixelQA finds the YAML files that live beside its code: `recipes/`, `datasets/` (cards), `experiments/`.

One lookup for every command (fit, evaluate, grid, data, the suites), the first match wins:

1. an environment variable: `PIXELQA_RECIPES=DIR` (the recipes folder itself), or `PIXELQA_HOME=DIR`, a folder
   holding `recipes/`, `datasets/` and `experiments/` (a clone, or a copy of those folders to edit). A variable
   that is set must name an existing folder: a typo is reported, never silently passed over;
2. the checkout the package was imported from (a clone, `pip install -e .`): `<root>/<kind>` beside `pixelqa/`;
3. the copies a wheel installs (`setup.cfg` `[options.data_files]`): `<prefix>/share/pixelqa/<kind>`, where
   `<prefix>` is the installation prefix of the `site-packages` folder the package was imported from (a venv,
   `--prefix`, `--user`, `--target`, a system install).

When none exists, `ResourceNotFoundError` (a FileNotFoundError) says in one line where it looked and how to point
PixelQA at a clone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KINDS: tuple[str, ...] = ("recipes", "datasets", "experiments")
HOME_ENV = "PIXELQA_HOME"
KIND_ENV: dict[str, str] = {"recipes": "PIXELQA_RECIPES"}  # a variable naming one folder itself (checked first)
SHARE = Path("share") / "pixelqa"  # under the installation prefix; what setup.cfg's data_files install
PREFIX_LEVELS = 4  # site-packages, lib/python3.X, lib, prefix (Windows: Lib/site-packages, Lib, prefix)
CHECKOUT_MARKERS = ("pyproject.toml", "setup.cfg")  # a checkout root holds one; site-packages holds neither


class ResourceNotFoundError(FileNotFoundError):
    """No folder of the kind asked for: the message names where PixelQA looked and how to point it at a clone."""


def package_dir() -> Path:
    """The folder of the imported `pixelqa` package (resolved)."""
    return Path(__file__).resolve().parent


def checkout_dir(kind: str) -> Path:
    """`<kind>/` beside the package folder: a clone's or an editable install's (not checked)."""
    return package_dir().parent / kind


def _is_checkout(root: Path) -> bool:
    return any((root / marker).is_file() for marker in CHECKOUT_MARKERS)


def installed_dirs(kind: str) -> list[Path]:
    """Where a wheel's copies of `<kind>/` can be: `<prefix>/share/pixelqa/<kind>` for each candidate prefix, the
    nearest first (the folders above the package's site-packages, then this interpreter's prefixes)."""
    site_packages = package_dir().parent
    above = list(site_packages.parents)[: PREFIX_LEVELS - 1]
    prefixes = [site_packages, *above, Path(sys.prefix), Path(sys.exec_prefix)]
    found: list[Path] = []
    for prefix in prefixes:
        path = prefix / SHARE / kind
        if path not in found:
            found.append(path)
    return found


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"resource kind {kind!r}: expected one of {', '.join(KINDS)}")


def _from_env(kind: str) -> Path | None:
    """The folder an environment variable names for `kind`; ResourceNotFoundError when it is set but missing."""
    name = KIND_ENV.get(kind)
    value = os.environ.get(name) if name else None
    if value:
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise ResourceNotFoundError(f"{name}={value}: no such folder (unset it, or name the {kind}/ folder)")
        return folder
    home = os.environ.get(HOME_ENV)
    if home:
        folder = Path(home).expanduser() / kind
        if not folder.is_dir():
            raise ResourceNotFoundError(
                f"{HOME_ENV}={home}: no folder {folder} (it must hold {', '.join(k + '/' for k in KINDS)}, "
                f"as a PixelQA clone does; unset it to use the installed copies)"
            )
        return folder
    return None


def resource_dir(kind: str) -> Path:
    """The folder of `kind` (recipes, datasets, experiments), by the lookup of this module's docstring."""
    _check_kind(kind)
    folder = _from_env(kind)
    if folder is not None:
        return folder
    checkout = checkout_dir(kind)
    if _is_checkout(checkout.parent) and checkout.is_dir():
        return checkout
    installed = installed_dirs(kind)
    for path in installed:
        if path.is_dir():
            return path
    env = f"${KIND_ENV[kind]} and ${HOME_ENV} are" if kind in KIND_ENV else f"${HOME_ENV} is"
    raise ResourceNotFoundError(
        f"no {kind}/ folder found: {env} unset; no clone's {checkout} beside the package; no {SHARE / kind} "
        f"(what a wheel installs) under {package_dir().parent}, the {PREFIX_LEVELS - 1} folders above it or "
        f"{sys.prefix}; set {HOME_ENV}=DIR to a PixelQA clone (the folder holding "
        f"{', '.join(k + '/' for k in KINDS)}), or install from a clone with `pip install -e DIR`"
    )
