"""Keyword arguments renamed by the naming rule for bounds, still accepted for a while.

The rule: a bound counted in events is ``<what>_size``, in bytes ``<what>_bytes``. A
keyword renamed by it (``collect(max_events=...)`` is now ``buffer_size``,
``connect(max_buffer=...)`` is now ``queue_size``) keeps working with a
:class:`DeprecationWarning` that names the new one, attributed to the caller's line
(outside evkit), so a notebook shows it.

No I/O.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType
from typing import TypeVar

__all__ = ["renamed_attribute", "renamed_keyword"]

T = TypeVar("T")


def renamed_keyword(
    function: str, old: str, old_value: T | None, new: str, new_value: T, default: T
) -> T:
    """The value of ``new``, or of the deprecated ``old`` when only that was given.

    Raises:
        TypeError: both keywords were given, with different values.
    """
    if old_value is None:
        return new_value
    warnings.warn(
        f"{function}({old}=...) is deprecated; use {new}={old_value!r} (a bound counted "
        f"in events is named <what>_size)",
        DeprecationWarning,
        stacklevel=_caller_outside_evkit(),
    )
    if new_value != default and new_value != old_value:
        raise TypeError(f"{function}() got both {old}={old_value!r} and {new}={new_value!r}")
    return old_value


def renamed_attribute(owner: str, old: str, new: str) -> None:
    """Warn that ``owner.old`` is deprecated in favour of ``owner.new``."""
    warnings.warn(
        f"{owner}.{old} is deprecated; read {owner}.{new} (a bound counted in events is "
        f"named <what>_size)",
        DeprecationWarning,
        stacklevel=_caller_outside_evkit(),
    )


def _caller_outside_evkit() -> int:
    """The ``stacklevel`` of the nearest frame that is not evkit's own code."""
    level = 2  # 1 is the function that warns
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module != "evkit" and not module.startswith("evkit."):
            return level
        frame = frame.f_back
        level += 1
    return level
