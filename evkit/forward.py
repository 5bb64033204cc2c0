"""Moved: the forwarder is :mod:`evkit.client.forwarder` (``evkit.connect`` is the way in).

This module keeps ``from evkit.forward import Forwarder, connect`` working.
"""

from __future__ import annotations

from evkit.client.forwarder import DEFAULT_REDACT_KEYS, Forwarder, connect

__all__ = ["DEFAULT_REDACT_KEYS", "Forwarder", "connect"]
