"""Stops held while a child process starts or stops: none is lost, none cuts in."""

from __future__ import annotations

import os
import signal

import pytest

from finlora.errors import Terminated, sigterm_raises_terminated, stops_held


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal, even when the test run itself was
    started in the background with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_sigterm_while_held_is_delivered_after_and_a_ctrl_c_is_ignored(ctrl_c_raises):
    reached_the_end = False
    with pytest.raises(Terminated), sigterm_raises_terminated(), stops_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nothing_is_delivered_when_nothing_was_held():
    with sigterm_raises_terminated(), stops_held():
        pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
