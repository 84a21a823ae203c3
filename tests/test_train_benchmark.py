"""benchmarks/train.py, at tiny sizes on the CPU, as scripts/device_check.sh runs it on a GPU.

Device time comes in minutes per session: a benchmark that broke here would spend them on a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO


def _run(profile: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--profile", str(profile), "--batch", "6",
                           "--steps", "1", "--rounds", "2", "--no-compile", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # Each round's rates come before the MFU part: a time limit that cuts it short keeps them.
    assert [line.get("rounds") for line in lines] == [1, 2, None] and "mfu" in lines[-1]
    assert lines[1].get("pairs_per_s_by_text_layout") == lines[-1].get("pairs_per_s_by_text_layout")
    return lines[-1]


@pytest.mark.slow
def test_real_caption_lengths_shrink_the_counted_step_and_every_layout_is_timed(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain"]["text_buckets"] = 3  # the profile's count is the one reported
    profile, lengths = tmp_path / "params.yaml", tmp_path / "lengths.json"
    profile.write_text(yaml.safe_dump(params))
    lengths.write_text(json.dumps([3, 5, 9, 12, 20]))
    full, real = _run(profile), _run(profile, "--caption-lengths", str(lengths), "--also-text-layouts", "1,2,pack")
    assert full["captions"].startswith("synthetic, every one fills the context")
    assert "median 9" in real["captions"]
    assert real["text_layout"] == "3" and set(real["pairs_per_s_by_text_layout"]) == {"3", "1", "2", "pack"}
    assert all(rate > 0 for rate in real["pairs_per_s_by_text_layout"].values())
    # The text tower is counted at the captions' lengths, not the context's: the same images, fewer FLOPs.
    assert 0 < real["step_tflop"] < full["step_tflop"]
