"""Log records as events: :class:`LoggingHandler` puts ``logging`` calls on the bus.

Each record becomes a ``log.<level>`` event (``log.info``, ``log.error``...) whose
payload says what a log line says (``level``, ``logger``, ``message``, ``location``,
``exception`` and ``errorType`` when there is one, the record's ``extra`` fields) and
where it was written: the ``correlationId`` and ``spanId`` current on the logging
thread, so a log line sits inside its trace next to the spans around it.

The handler reads the context on the thread that logs, at the moment it logs: it must
not be put behind a ``QueueHandler`` (the queue's thread has no context) and must not
log itself. It does no I/O: what happens to the event is the bus's handlers' business
(a broadcaster, a collector, nothing at all).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, Final

from evkit.bus import EventBus, global_bus
from evkit.context import current_span_id

__all__ = ["LOG_PREFIX", "LoggingHandler"]

LOG_PREFIX: Final = "log"
"""Log events are ``log.<level>``: ``log.*`` subscribes to all of them."""

_NOT_IN_A_TYPE = re.compile(r"[^A-Za-z0-9_-]+")
# What every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
)


class LoggingHandler(logging.Handler):
    """A :class:`logging.Handler` that emits each record as a ``log.<level>`` event.

    ::

        logging.getLogger().addHandler(evkit.LoggingHandler())
        with evkit.span("orders.load"):
            logging.getLogger("orders").warning("slow page %d", 3)
        # -> log.warning {level: "WARNING", logger: "orders", message: "slow page 3",
        #    location: "orders.py:42", spanId: <orders.load's>, correlationId: ...}

    Payload: ``level`` (the level's name), ``logger``, ``message`` (the record's own
    message, arguments merged; the handler's formatter is not applied), ``location``
    (``file:line``), ``spanId`` (the current span, or null), ``correlationId`` (the
    current correlation, stamped by the bus), ``exception`` (the formatted traceback)
    and ``errorType`` when the record carries one, ``stack`` for ``stack_info``, and
    the record's ``extra`` fields (the handler's own fields win over them).

    Records of the loggers in ``ignore`` (and their children) are skipped: by default
    evkit's own and websockets', whose lines describe the stream these events travel
    on. A record logged while this handler is emitting on the same thread (a bus
    handler that logs) is skipped too, so a handler on the root logger cannot loop.
    Events go to ``bus`` (the global bus by default).
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        bus: EventBus | None = None,
        ignore: Iterable[str] = ("evkit", "websockets"),
    ) -> None:
        super().__init__(level)
        self.bus = bus
        self.ignore = tuple(ignore)
        self._ignored_prefixes = tuple(f"{name}." for name in self.ignore)
        self._types: dict[str, str] = {}
        self._emitting = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Emit ``record`` as an event; errors go to :meth:`logging.Handler.handleError`."""
        name = record.name
        if name in self.ignore or name.startswith(self._ignored_prefixes):
            return
        emitting = self._emitting
        if getattr(emitting, "active", False):
            return
        emitting.active = True
        try:
            target = self.bus if self.bus is not None else global_bus
            target.emit(self._type(record), self.payload(record))
        except Exception:
            self.handleError(record)
        finally:
            emitting.active = False

    def payload(self, record: logging.LogRecord) -> dict[str, Any]:
        """What the event of ``record`` carries (see the class docstring)."""
        fields = record.__dict__
        # A record without extra= has only the standard attributes (checked in C).
        payload: dict[str, Any] = (
            {key: value for key, value in fields.items() if key not in _RECORD_FIELDS}
            if fields.keys() - _RECORD_FIELDS
            else {}
        )
        payload["level"] = record.levelname
        payload["logger"] = record.name
        payload["message"] = record.getMessage()
        payload["location"] = f"{record.filename}:{record.lineno}"
        payload["spanId"] = current_span_id()
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = _formatter.formatException(record.exc_info)
            payload["errorType"] = record.exc_info[0].__name__
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = record.stack_info
        return payload

    def _type(self, record: logging.LogRecord) -> str:
        name = record.levelname
        known = self._types.get(name)
        if known is None:
            level = _NOT_IN_A_TYPE.sub("_", name.lower()).strip("_") or str(record.levelno)
            known = self._types[name] = f"{LOG_PREFIX}.{level}"
        return known

    def __repr__(self) -> str:
        bus = "global bus" if self.bus is None else repr(self.bus)
        return f"<evkit.LoggingHandler {logging.getLevelName(self.level)} -> {bus}>"


_formatter = logging.Formatter()
