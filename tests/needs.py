"""What a test needs but the machine may lack: a failure under CI=true, else a skip."""

from __future__ import annotations

import os

import pytest


def missing(message: str) -> None:
    """Something a test needs is not there: fail under CI=true (.ci/run installs it and the
    data is beside the checkout), else skip with `message`, which names the fix."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
