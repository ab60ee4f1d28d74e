"""The output directory as other users and containers meet it."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

from finlora.artifacts import atomic_output_dir, check_output_file, is_stream, write_json


def test_finished_output_dir_has_the_mode_the_umask_gives(tmp_path):
    """Another user or a serving container must be able to read a trained model."""
    previous = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


def test_an_output_file_behind_a_symlink_is_replaced_and_the_link_kept(tmp_path):
    real = tmp_path / "results" / "metrics.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    check_output_file(link)
    write_json(link, {"macro_f1": 0.9})
    assert link.is_symlink() and json.loads(real.read_text()) == {"macro_f1": 0.9}
    assert sorted(p.name for p in real.parent.iterdir()) == ["metrics.json"]


def test_streams_are_written_in_place_not_renamed_over(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert is_stream(fifo) and is_stream(Path("/dev/stdout")) and is_stream(Path("/dev/null"))
    assert not is_stream(tmp_path / "new.json") and not is_stream(tmp_path)
    check_output_file(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json(fifo, {"ok": True})
    reader.join(timeout=10)
    assert json.loads(received[0]) == {"ok": True} and stat.S_ISFIFO(fifo.stat().st_mode)
