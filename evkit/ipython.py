"""The IPython extension: ``%load_ext evkit`` gives ``%%trace`` and ``%evkit``.

- ``%%trace NAME [-o VAR]`` runs the cell as one trace: a new correlation id, a root
  span ``NAME`` (spans begun in the cell, ``@evkit.emits`` calls and ``evkit.span``
  blocks, become its children; log records too, with :class:`evkit.LoggingHandler`),
  then shows the trace's waterfall under the cell. A cell that raises marks the span
  failed, shows the chart, then the traceback. ``-o VAR`` keeps the :class:`Trace`.
- ``%evkit serve [PORT]``, ``%evkit status``, ``%evkit tail [N]``, ``%evkit stop``:
  a broadcaster for this kernel, what it and the kernel's bus are doing, the latest
  events, and stopping it. Each can be run again: ``serve`` gives the running server
  back, ``stop`` with nothing running says so.

The cell runs on the kernel's thread, in its namespace, synchronously: a cell magic
cannot await, so a ``%%trace`` cell with top-level ``await`` is refused (use ``async
with evkit.span(NAME):`` in an ordinary cell). Threads the cell starts do not inherit
its trace (contextvars do not cross threads). This module must not touch the kernel's
event loop; servers run on evkit's loop thread as everywhere else.
"""

from __future__ import annotations

import ast
import os
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from evkit.collector import BusCollector, capture
from evkit.context import correlation
from evkit.exceptions import InvalidEventError
from evkit.protocol import validate_event_type
from evkit.server import Server, serve
from evkit.tracing import Span

if TYPE_CHECKING:
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell

    from evkit.analysis import Figure

__all__ = ["EvkitMagics", "Trace", "load_ipython_extension", "unload_ipython_extension"]

RECENT_EVENTS: Final = 10_000
"""How many of the kernel's latest events ``%evkit tail`` and ``status`` can look back on."""

TRACE_EVENTS: Final = 1_000_000
"""The most events one ``%%trace`` cell keeps for its chart."""

_VERBS: Final = "serve [PORT], status, tail [N], stop"


@dataclass
class Trace:
    """One ``%%trace`` run: its name, correlation id, root span and events.

    Displays itself as the waterfall. ``events`` is the collector's DataFrame of every
    event of the trace; the methods run :mod:`evkit.analysis` on it.
    """

    name: str
    correlation_id: str
    span: Span
    events: pd.DataFrame = field(repr=False)

    def waterfall(self) -> Figure:
        """The trace's waterfall (:func:`evkit.analysis.plot_waterfall`)."""
        from evkit import analysis

        return analysis.plot_waterfall(self.events, self.correlation_id)

    def critical_path(self) -> pd.DataFrame:
        """The trace's critical path with each step's own time and share."""
        from evkit import analysis

        return analysis.critical_path(self.events, self.correlation_id)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> Any:
        return self.waterfall()._repr_mimebundle_()


@magics_class
class EvkitMagics(Magics):
    """``%%trace`` and ``%evkit``; registered by :func:`load_ipython_extension`."""

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self.server: Server | None = None
        self.recent: BusCollector = capture(buffer_size=RECENT_EVENTS)

    @cell_magic
    def trace(self, line: str, cell: str) -> None:
        """Run the cell as a trace named NAME and show its waterfall: %%trace NAME [-o VAR]."""
        __tracebackhide__ = True
        name, keep_as = _trace_arguments(line)
        code = self._compile(line, cell)
        correlation_id = f"{name}-{os.urandom(4).hex()}"
        root = Span(name, {"cell": _cell_number(self.shell)})
        failure: BaseException | None = None
        with capture(correlation_id=correlation_id, buffer_size=TRACE_EVENTS) as events:
            with correlation(correlation_id):
                root.start()
                token = root.current()
                try:
                    self._run(code)
                except BaseException as error:
                    failure = error
                finally:
                    root.finish(failure)
                    root.restore(token)
            result = Trace(name, correlation_id, root, events.to_dataframe())
        if keep_as is not None and self.shell is not None:
            self.shell.user_ns[keep_as] = result
        display(result)  # type: ignore[no-untyped-call]  # IPython leaves display untyped
        if failure is not None:
            raise failure.with_traceback(_user_frames(failure.__traceback__, code.filename))

    @line_magic
    def evkit(self, line: str) -> Any:
        """%evkit serve [PORT] | status | tail [N] | stop"""
        words = shlex.split(line)
        verb, arguments = (words[0], words[1:]) if words else ("status", [])
        if verb == "serve":
            return self._serve(_number(arguments, "PORT", 0))
        if verb == "status":
            return self._status()
        if verb == "tail":
            return self.recent.to_dataframe().tail(_number(arguments, "N", 20))
        if verb == "stop":
            return self._stop()
        raise UsageError(f"%evkit {verb}: unknown verb; use one of: {_VERBS}")

    # -- %evkit ------------------------------------------------------------------------------

    def _serve(self, port: int) -> Server:
        running = self.server
        if running is not None and running.running:
            if port in (0, running.port):
                return running
            running.stop()  # another port asked for: this notebook's server moves there
        self.server = serve(port=port)
        return self.server

    def _status(self) -> None:
        if self.server is None or not self.server.running:
            print("no server: %evkit serve starts one; the kernel's events so far:")
        else:
            display(self.server)  # type: ignore[no-untyped-call]
        display(self.recent)  # type: ignore[no-untyped-call]

    def _stop(self) -> None:
        server, self.server = self.server, None
        if server is None or not server.running:
            print("no server to stop")
            return
        server.stop()
        print(f"stopped {server.url}")

    # -- %%trace -----------------------------------------------------------------------------

    def _compile(self, line: str, cell: str) -> _Cell:
        """The cell, transformed (magics, ``!``) and compiled, its last expression apart.

        Raises:
            SyntaxError: the cell does not parse (shown as IPython shows it).
            UsageError: the cell awaits at top level.
        """
        shell = self.shell
        assert shell is not None
        source: str = shell.transform_cell(cell)  # type: ignore[no-untyped-call]
        # Cached with the magic's line, so tracebacks number lines as the cell shows them.
        shown = f"%%trace {line}\n"
        filename = shell.compile.cache(shown + source, _cell_number(shell), raw_code=shown + cell)
        tree = ast.increment_lineno(ast.parse(source, filename), 1)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            tree.body.pop()  # evaluated apart, to be displayed as the cell's value
        else:
            last = None
        try:
            body = compile(tree, filename, "exec", dont_inherit=True)
            value = (
                compile(ast.Expression(last.value), filename, "eval", dont_inherit=True)
                if last is not None
                else None
            )
        except SyntaxError as error:
            if "await" in str(error) or "async" in str(error):
                raise UsageError(
                    "%%trace runs its cell synchronously and cannot await; trace async code "
                    "in an ordinary cell with: async with evkit.span(NAME): ..."
                ) from None
            raise
        return _Cell(filename, body, value)

    def _run(self, code: _Cell) -> None:
        __tracebackhide__ = True
        shell = self.shell
        assert shell is not None
        namespace = shell.user_ns
        exec(code.body, namespace)
        if code.value is not None:
            result = eval(code.value, namespace)
            if result is not None:
                shell.displayhook(result)


@dataclass(frozen=True)
class _Cell:
    filename: str
    body: Any
    value: Any


def _trace_arguments(line: str) -> tuple[str, str | None]:
    words = shlex.split(line)
    keep_as = None
    if len(words) == 3 and words[1] == "-o" and words[2].isidentifier():
        keep_as = words[2]
        words = words[:1]
    if len(words) != 1:
        raise UsageError("usage: %%trace NAME [-o VARIABLE], for example %%trace load-orders")
    try:
        validate_event_type(words[0])
    except InvalidEventError:
        raise UsageError(
            f"%%trace {words[0]!r}: the name becomes event types ({words[0]}.started), so it "
            "must be letters, digits, '_' and '-', dot-separated: %%trace orders.load"
        ) from None
    return words[0], keep_as


def _cell_number(shell: InteractiveShell | None) -> int:
    """The number of the cell running now (In[n]): the shell counts it before it runs."""
    return max(shell.execution_count - 1, 0) if shell is not None else 0


def _number(arguments: list[str], name: str, default: int) -> int:
    if not arguments:
        return default
    if len(arguments) == 1 and arguments[0].isdigit():
        return int(arguments[0])
    raise UsageError(f"expected at most one {name} (a whole number), got {' '.join(arguments)!r}")


def _user_frames(traceback: Any, filename: str) -> Any:
    """The traceback from the cell's own first frame on: the magic's frames are noise."""
    frame = traceback
    while frame is not None and frame.tb_frame.f_code.co_filename != filename:
        frame = frame.tb_next
    return frame if frame is not None else traceback


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%%trace`` and ``%evkit`` (what ``%load_ext evkit`` calls)."""
    ipython.register_magics(EvkitMagics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Stop what ``%evkit`` started and the kernel-wide capture (``%unload_ext evkit``)."""
    magics = ipython.magics_manager.registry.get("EvkitMagics")
    if isinstance(magics, EvkitMagics):
        magics._stop()
        magics.recent.stop()
