"""Source converters, one module per source; importing this package imports (and so registers) them all.

A module that fails to import does not stop the others: the error is logged, remembered, and shown by
`pixelqa.data.catalog.get_source` when a source is not found (`IMPORT_ERRORS`).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger(__name__)

# module -> "ExceptionType: message" of each converter module that failed to import
IMPORT_ERRORS: dict[str, str] = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as e:  # noqa: BLE001 - one broken converter must not hide the others
        IMPORT_ERRORS[f"{__name__}.{_info.name}"] = f"{type(e).__name__}: {e}"
        log.warning("converter module %s.%s failed to import: %s: %s", __name__, _info.name, type(e).__name__, e)
