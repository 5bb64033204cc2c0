"""evkit's background event loop: one daemon thread, the one way in from other threads.

Servers, collectors and async bus handlers run on this loop. Code on any other thread
(a notebook cell, a worker thread, another event loop such as the Jupyter kernel's)
reaches it only through :class:`LoopThread`: :meth:`~LoopThread.run` to wait for a
coroutine's result, :meth:`~LoopThread.submit` to fire one off, and
:meth:`~LoopThread.call_soon` for a plain callback. Nothing here touches the
caller's own loop, so nothing needs patching.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from evkit.exceptions import LoopError

__all__ = ["LoopHandle", "LoopThread", "loop_thread"]

T = TypeVar("T")


class LoopHandle:
    """Callbacks into one asyncio loop from any thread, whoever runs that loop.

    The broadcaster runs on evkit's loop thread or, embedded, on an application's own
    loop: this is how the threads that emit events reach it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop soon; safe from any thread.

        Returns False when the loop is closed (nothing will run).
        """
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def call_later(self, delay: float, callback: Callable[..., Any]) -> None:
        """Run ``callback`` on the loop after ``delay`` seconds; call on the loop itself."""
        if delay > 0:
            self.loop.call_later(delay, callback)
        else:
            self.loop.call_soon(callback)


class LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self, name: str = "evkit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @property
    def alive(self) -> bool:
        """Whether the thread and its loop are still running."""
        return self.thread.is_alive() and not self.loop.is_closed()

    def in_loop_thread(self) -> bool:
        """Whether the caller is running on this loop's thread."""
        return threading.get_ident() == self.thread.ident

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and block the caller until it returns.

        Raises:
            LoopError: called from the loop's own thread (it would wait on itself).
            TimeoutError: no result within ``timeout`` seconds (the coroutine is cancelled).
            Exception: whatever the coroutine raised.
        """
        if self.in_loop_thread():
            coroutine.close()
            raise LoopError(
                "this blocking call was made on evkit's own loop thread, where it would wait "
                "on itself; call it from another thread, or await the async API instead"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"evkit loop call did not finish within {timeout} s") from None

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coroutine`` on the loop without waiting; returns its future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop soon; safe from any thread."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread (tasks still pending are cancelled)."""
        if not self.alive:
            return

        async def cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not self.in_loop_thread():
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.run(cancel_all(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self.thread.join(timeout)


_lock = threading.Lock()
_current: LoopThread | None = None


def loop_thread() -> LoopThread:
    """The process's evkit loop thread, started on first use (and again if it died)."""
    global _current
    current = _current
    if current is not None and current.alive:
        return current
    with _lock:
        if _current is None or not _current.alive:
            _current = LoopThread()
        return _current


def _shutdown() -> None:
    if _current is not None:
        _current.stop(timeout=2.0)


atexit.register(_shutdown)
