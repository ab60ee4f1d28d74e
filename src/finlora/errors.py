"""The exception types the CLI turns into one line: a user-fixable problem, and a SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


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
def sigterm_raises_terminated() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler comes back after.

    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def drop_unraisable_exceptions() -> None:
    """For a process ending on a stop (Ctrl-C, SIGTERM): a stop can land inside a constructor
    (a tqdm bar's, say), and the half-built object's __del__ then fails as it is freed, which
    Python prints as 'Exception ignored ... Traceback' after finlora's one line. Nothing in it
    is the user's to act on, so such reports are dropped from here on."""
    sys.unraisablehook = _drop


def _drop(unraisable: object) -> None:
    return None
