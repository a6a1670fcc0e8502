"""RefCOCO, RefCOCO+, RefCOCOg (umd and google splits) and RefClef: thin registrations of the refer family.

Layout and sample shape: see `pixelqa.data.sources.refer`. Source names use `_plus` for '+', since keys
and source names are limited to [A-Za-z0-9_-].
"""

from __future__ import annotations

from pixelqa.data.registry import register_source
from pixelqa.data.sources.refer import CLEF_IMAGE_DIRS, ReferSource


@register_source("refcoco")
class RefCOCO(ReferSource):
    """RefCOCO, UNC splits."""

    dataset = "refcoco"
    split_by = "unc"
    splits = ("train", "val", "testA", "testB")


@register_source("refcoco_plus")
class RefCOCOPlus(ReferSource):
    """RefCOCO+, UNC splits (no location words in the expressions)."""

    dataset = "refcoco+"
    split_by = "unc"
    splits = ("train", "val", "testA", "testB")


@register_source("refcocog")
class RefCOCOg(ReferSource):
    """RefCOCOg, UMD splits (the ones RES papers report)."""

    dataset = "refcocog"
    split_by = "umd"
    splits = ("train", "val", "test")


@register_source("refcocog_google")
class RefCOCOgGoogle(ReferSource):
    """RefCOCOg, the original Google splits (no public test split)."""

    dataset = "refcocog"
    split_by = "google"
    splits = ("train", "val")


@register_source("refclef")
class RefClef(ReferSource):
    """RefClef (ReferItGame on SAIAPR TC-12 images), UNC splits; masks are RLE in instances.json."""

    dataset = "refclef"
    split_by = "unc"
    image_dirs = CLEF_IMAGE_DIRS
    splits = ("train", "val", "testA", "testB", "testC")
