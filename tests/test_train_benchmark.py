"""benchmarks/train.py, at tiny sizes on the CPU, as scripts/device_check.sh runs it on a GPU.

Device time comes in minutes per session: a benchmark that broke here would spend them on a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


def _run(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--profile", "params.yaml", "--batch", "6",
                           "--steps", "1", "--rounds", "1", "--no-compile", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["phase"] == "rates" and "mfu" in lines[-1]  # the rates survive an MFU part that overruns
    return lines[-1]


@pytest.mark.slow
def test_real_caption_lengths_shrink_the_counted_step_and_every_group_count_is_timed(tmp_path):
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps([3, 5, 9, 12, 20]))
    full, real = _run(), _run("--caption-lengths", str(lengths), "--also-text-buckets", "1,3")
    assert full["captions"].startswith("synthetic, every one fills the context")
    assert "median 9" in real["captions"]
    assert real["text_buckets"] == 1 and set(real["pairs_per_s_by_text_buckets"]) == {"1", "3"}
    assert all(rate > 0 for rate in real["pairs_per_s_by_text_buckets"].values())
    # The text tower is counted at the captions' lengths, not the context's: the same images, fewer FLOPs.
    assert 0 < real["step_tflop"] < full["step_tflop"]
