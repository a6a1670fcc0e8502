"""The one error type of `pixelqa.predict` for bad user input (the CLI prints it as one line and exits 2)."""

from __future__ import annotations


class PredictInputError(ValueError):
    """A bad argument of predict: the message names the argument, the value and what was expected."""
