"""The public API is exactly ``evkit.__all__`` (in the manner of httpx's test)."""

from __future__ import annotations

import inspect
import types

import evkit

# Submodules become attributes of the package when imported; they are reached as
# ``evkit.<module>`` but are not part of the flat API, except ``bus`` (``evkit.bus.on``).
EXPORTED_MODULES = {"bus"}


def test_all_has_no_duplicates() -> None:
    assert len(evkit.__all__) == len(set(evkit.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in evkit.__all__ if not hasattr(evkit, name)]
    assert missing == []


def test_every_public_function_and_class_is_in_all() -> None:
    public = {
        name
        for name, value in vars(evkit).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", "").split(".")[0] == "evkit"
    }
    assert public - set(evkit.__all__) == set()


def test_only_the_bus_submodule_is_exported() -> None:
    exported_modules = {
        name for name in evkit.__all__ if isinstance(getattr(evkit, name), types.ModuleType)
    }
    assert exported_modules == EXPORTED_MODULES
    assert evkit.bus.__name__ == "evkit.bus"


def test_design_names_are_exported() -> None:
    # DESIGN 2 names the core API a notebook uses; these must never drop out of __all__.
    for name in [
        "serve",
        "emit",
        "emits",
        "correlation",
        "request_bus",
        "bus",
        "flush",
        "EvkitError",
        "__version__",
    ]:
        assert name in evkit.__all__, name


def test_exported_exceptions_share_one_root() -> None:
    exported = [getattr(evkit, name) for name in evkit.__all__]
    exceptions = [
        value
        for value in exported
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and not issubclass(value, Warning)
    ]
    assert evkit.EvkitError in exceptions
    for exception in exceptions:
        assert issubclass(exception, evkit.EvkitError), exception
    assert issubclass(evkit.EvkitWarning, UserWarning)


def test_version_is_a_string() -> None:
    assert isinstance(evkit.__version__, str)
    assert evkit.__version__.count(".") >= 1
