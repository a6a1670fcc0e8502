"""Source registration as a notebook does it: running the same definition again replaces it, another definition
under a taken name is refused."""

from __future__ import annotations

import pytest

from pixelqa.data import registry
from pixelqa.data.registry import Source, register_source, registered_sources


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Registrations of these tests go to a registry of their own."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_ORIGINS", {}, raising=False)


def define_function_source(tag: str):
    """The same cell run again: one definition (same module and qualified name), a new function object each time."""

    @register_source("toy_cell", splits=("train",))
    def toy_cell(root, split):
        yield tag

    return toy_cell


def define_class_source(tag: str, broken: bool = False):
    @register_source("toy_class")
    class ToyClass(Source):
        if not broken:  # a cell edited into a mistake: no samples

            def samples(self, root, split):
                yield tag

    return ToyClass


def test_running_the_same_definition_again_replaces_it():
    first = define_function_source("first")
    second = define_function_source("second")
    assert first is not second
    assert list(registered_sources()["toy_cell"].samples(None, "train")) == ["second"]
    assert registered_sources()["toy_cell"].splits == ("train",)
    define_class_source("first")
    define_class_source("second")
    assert list(registered_sources()["toy_class"].samples(None, "train")) == ["second"]


def test_another_definition_under_a_taken_name_is_refused():
    define_function_source("first")

    def other(root, split):
        yield "other"

    with pytest.raises(ValueError, match=r"name: source 'toy_cell' is already registered \(by .*toy_cell\)"):
        register_source("toy_cell")(other)
    assert list(registered_sources()["toy_cell"].samples(None, "train")) == ["first"]  # the first one stays

    class Other(Source):
        def samples(self, root, split):
            yield "other"

    with pytest.raises(ValueError, match="already registered"):
        register_source("toy_cell")(Other)


def test_a_bad_redefinition_keeps_the_registered_one():
    define_class_source("first")

    with pytest.raises(TypeError, match="must override"):
        define_class_source("second", broken=True)  # the same definition, now refused: the first one stays
    assert list(registered_sources()["toy_class"].samples(None, "train")) == ["first"]
