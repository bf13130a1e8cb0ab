"""Ctrl-C, SIGTERM (scancel, kill) and SIGHUP (a closed terminal or lost SSH session) as KeyboardInterrupt, held
while the main thread is inside a tracking-store call.

Python raises a signal handler's exception wherever the main thread happens to be. Inside SQLAlchemy it can leak
a connection that keeps SQLite's write lock, so every later write, the run's own end included, fails with
"database is locked" and the run stays RUNNING; inside a finalizer it is swallowed ("Exception ignored in ...")
and training goes on. So a signal that arrives during a store call (`held`) is raised when the call returns, one
a finalizer swallowed is raised again at the next batch (`raise_pending`), and a second signal is raised at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_STATUS = 130  # 128 + SIGINT: how a shell reports a command that Ctrl-C stopped

_held = 0  # depth of held calls in the main thread (signal handlers run only there)
_pending: KeyboardInterrupt | None = None  # asked for by a signal, not yet taken by the run's end


def _on_signal(signum: int, frame) -> None:
    global _pending
    again = _pending is not None
    # Ctrl-C's interrupt has no text, as from Python's own handler
    text = () if signum == signal.SIGINT else (f"signal {signal.Signals(signum).name}",)
    _pending = KeyboardInterrupt(*text)
    if _held == 0 or again:
        raise _pending


def install() -> None:
    """Take SIGTERM, SIGHUP and Ctrl-C; from the main thread only. SIGINT only where Python's own handler has it:
    a command started in the background (`cmd &`) ignores Ctrl-C and goes on ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signum != signal.SIGINT or signal.getsignal(signum) in (signal.default_int_handler, _on_signal):
            signal.signal(signum, _on_signal)


@contextmanager
def held() -> Iterator[None]:
    """Hold a signal's interrupt until the block ends; it is raised then, unless the block raised."""
    global _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    raise_pending()


def raise_pending() -> None:
    """Raise the interrupt a signal asked for, if nothing has taken it yet and no store call is in progress."""
    if _pending is not None and _held == 0:
        raise _pending


def take() -> KeyboardInterrupt | None:
    """The interrupt a signal asked for, if any, now handled (the run ends KILLED with it)."""
    global _pending
    interrupt, _pending = _pending, None
    return interrupt


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP taken as `install` takes them (a store call finishes before its interrupt is
    raised) inside the block; the handlers before it after (a notebook's, a test process's)."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    main = threading.current_thread() is threading.main_thread()
    before = {signum: signal.getsignal(signum) for signum in signals} if main else {}
    install()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def forget() -> None:
    """After a handled Ctrl-C: let the process exit with the status it chooses. CPython remembers a KeyboardInterrupt
    that escaped code run through `PyRun_String` (Cython's and pybind11's module set-up: an import the Ctrl-C landed
    in) and then ends `python -m ...` by SIGINT whatever its exit status; running any string through it resets that."""
    with contextlib.suppress(Exception):
        ctypes.pythonapi.PyRun_SimpleString(b"pass")
