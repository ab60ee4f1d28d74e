"""What the CLI turns into one line: a user-fixable problem, and a stop (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class FinloraError(Exception):
    """A user-fixable problem: bad input, missing file, impossible setting.

    The message is a single line that names the problem and the fix; the CLI prints it
    and exits with code 2 instead of showing a traceback.
    """


class Terminated(BaseException):
    """SIGTERM (a scheduler, a spot notice, `kill`) raised as an exception, like Ctrl-C's
    KeyboardInterrupt, so that temporary directories and staging output are removed on the way
    out instead of being left behind by a process that simply dies."""


# What a shell reports for a process killed by SIGTERM or SIGINT (Ctrl-C), kept when finlora
# exits on one itself.
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _signal_handlers(handlers: dict[int, Any]) -> Iterator[None]:
    """Within the block, these handlers; the previous ones come back after. Signal handlers
    can only be set from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sigterm_raises_terminated() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM raises `Terminated`."""
    return _signal_handlers({signal.SIGTERM: _raise_terminated})


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Within the block a stop cannot cut in: SIGINT is ignored (and a process started here
    inherits that, so a Ctrl-C in a terminal, which reaches the whole process group, leaves it to
    whoever started it to stop it), and a SIGTERM is kept and delivered when the block ends.

    For starting and stopping a child process, which must not be left half-done.
    """
    held: list[int] = []
    keep = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: lambda signum, _: held.append(signum)}
    try:
        with _signal_handlers(keep):
            yield
    finally:
        if held:
            signal.raise_signal(signal.SIGTERM)


def quiet_half_built_objects() -> None:
    """For a process ending on a stop: the stop can land inside a constructor (a tqdm bar's,
    say), and the half-built object's __del__ then fails on an attribute __init__ never set,
    which Python would print as 'Exception ignored ... Traceback' after finlora's one line.
    Those AttributeErrors are dropped from here on; anything else is still reported."""
    report = sys.unraisablehook

    def report_unless_half_built(unraisable: sys.UnraisableHookArgs) -> None:
        if not issubclass(unraisable.exc_type, AttributeError):
            report(unraisable)

    sys.unraisablehook = report_unless_half_built
