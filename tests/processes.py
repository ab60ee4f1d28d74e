"""Real `finlora` processes stopped the way a scheduler stops them, and what they leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def stop_once_training(
    command: list[str],
    scratch: Path,
    log: Path,
    signum: int = signal.SIGTERM,
    whole_group: bool = False,
) -> int:
    """Run `command` with TMPDIR=`scratch`, send it `signum` once a checkpoint exists (it is
    training), and return its exit code; stderr goes to `log`. `whole_group` sends the signal
    to every process of the command's group, as Ctrl-C in a terminal does."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            env={**os.environ, "TMPDIR": str(scratch)},
            stderr=stderr,
            start_new_session=whole_group,
            preexec_fn=sigint_as_in_a_terminal,
        )
        deadline = time.monotonic() + 600
        while not list(scratch.rglob("checkpoint-*")):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        return process.wait(timeout=120)


def sigint_as_in_a_terminal() -> None:
    """For `preexec_fn`: a test run started in the background by a script (`pytest &`) has
    SIGINT ignored, and its children inherit that; a process a test interrupts must get the
    default, so that Python turns SIGINT into KeyboardInterrupt as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_with(environment_entry: bytes, grace: float = 30.0) -> list[int]:
    """Processes whose environment holds this exact entry (e.g. a test's TMPDIR) and that are
    still alive after up to `grace` seconds: multiprocessing's resource tracker outlives its
    parent by a moment, a child left training does not."""
    deadline = time.monotonic() + grace
    while (pids := _live_with(environment_entry)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _live_with(environment_entry: bytes) -> list[int]:
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if environment_entry in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids
