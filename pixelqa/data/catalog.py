"""The converter catalogue: every source registered by the modules of `pixelqa.data.sources`, by name.

The first `get_source` / `list_sources` call imports `pixelqa.data.sources` (every converter module, about a second
with the video readers), so importing this module stays cheap. A converter module that failed to import is named in
the error for a source not found, since its sources are then missing.
"""

from __future__ import annotations

from pixelqa.data.registry import Source, registered_sources


def _catalogue() -> tuple[dict[str, Source], dict[str, str]]:
    """(registered converters by name, {module: error} of converter modules that failed to import)."""
    from pixelqa.data import sources  # imports (and so registers) every converter module, once

    return registered_sources(), dict(sources.IMPORT_ERRORS)


def get_source(name: str) -> Source:
    """The registered converter `name`."""
    found, errors = _catalogue()
    if name not in found:
        msg = f"source: got {name!r}, expected one of {sorted(found)}"
        if errors:
            msg += f"; converter modules that failed to import: {errors}"
        raise ValueError(msg)
    return found[name]


def list_sources() -> list[str]:
    """Names of all registered converters, sorted."""
    return sorted(_catalogue()[0])
