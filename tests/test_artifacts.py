"""The output directory as other users and containers meet it."""

from __future__ import annotations

import os
import stat

from finlora.artifacts import atomic_output_dir


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
