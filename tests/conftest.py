"""Shared fixtures: the repo's real sample, and throw-away copies of the project to run stages in."""
from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# DVC and Prefect bind their log handlers to sys.stdout/stderr when first imported: here, not inside a test
# whose capsys swaps in streams it closes after (a later test running DVC or a flow in-process would fail to log).
import dvc  # noqa: F401
import prefect.main  # noqa: F401
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["Axial CT of the chest shows a nodule in the right upper lobe.",
            "Histology of the liver, haematoxylin and eosin stain, scale bar 50 µm.",
            "Kaplan–Meier survival curves for the two cohorts."] * 3
SAMPLE_MIRROR = REPO / "sample" / "pmc-mirror"
PROJECT_FILES = ("src", "stages", "flows", "sample", "params.yaml", "dvc.yaml", "requirements.txt", "constraints.txt",
                 "deploy", "pyproject.toml")

# The embedded default's training recipe (≈25 s on 2 cores: enough to learn the sample above
# chance), with one zero-shot dataset to keep evaluation short.
TINY = {"evaluate": {"zeroshot": {"chest_xray_pneumonia": None}}}

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Flows run without the harness below use Prefect's ephemeral API on $PREFECT_HOME's database: one of
# the test run's own, not the user's ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
# Under ``make test``'s workers (pytest-xdist) each worker, and every stage it starts, gets its share of the
# cores for torch's threads and torch.compile's compiler processes: two workers of two threads each on two
# cores spin against each other (measured: 21 CPU-minutes for the suite against 19), and a pool of compiler
# processes per worker costs more to start than it saves.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(_share))


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if all(v is None for v in value.values()):  # keep only the listed keys
                base[key] = {k: base[key][k] for k in value}
            else:
                _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """A copy of the project (code, sample, params, DAG) as a git+DVC repo in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _merge(params, overrides if overrides is not None else TINY)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "project"],
                   cwd=dest, check=True)
    return dest


def project_env(project: Path) -> dict[str, str]:
    """The environment a project's stages run in: its own code first on the path."""
    return {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}


# `dvc status --json` of a project with nothing to do: only the stage that digests the inputs params
# name and the one that reconciles the registry, which run every time (dvc.yaml says why).
UP_TO_DATE = {"inputs": ["always changed"], "register": ["always changed"]}


def dvc(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``project`` as a user runs it (the project's stages on ``python``'s path); must succeed."""
    env = {**(env or project_env(project)), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def dvc_status(project: Path, env: dict[str, str] | None = None) -> dict:
    import json

    return json.loads(dvc(project, "status", "--json", env=env).stdout)


def stage_command(project: Path, stage: str) -> list[str]:
    """The stage's command exactly as the project's dvc.yaml gives it to DVC (this interpreter for ``python``)."""
    cmd = shlex.split(yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert cmd[0] == "python", cmd
    return [sys.executable, *cmd[1:]]


def run_stage(project: Path, stage: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one stage inside ``project`` as DVC would, without DVC's bookkeeping."""
    proc = subprocess.run(stage_command(project, stage), cwd=project, env=project_env(project), capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{stage} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# Among the tests on the built project, the longest (servers started, whole flows run): first, so that
# no worker is left running one of them alone at the end.
LONGEST_ON_THE_BUILT_PROJECT = ("tests.test_servers", "tests.test_flows", "tests.test_task_runner")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the built project run last: under ``make test``'s workers (pytest-xdist) the first to reach one
    builds the project while the others still have their own tests to run."""
    def order(item: pytest.Item) -> tuple[bool, bool]:
        on_built = "built_project" in getattr(item, "fixturenames", ())
        return on_built, on_built and item.module.__name__ not in LONGEST_ON_THE_BUILT_PROJECT

    items.sort(key=order)


# What libraries set once per process, whichever test first gets there (torch's inductor its cache dir,
# HF tokenizers its parallelism before a fork): the same for every stage, and not the test's doing.
SET_ONCE_BY_LIBRARIES = ("TORCHINDUCTOR_CACHE_DIR", "TOKENIZERS_PARALLELISM")


@pytest.fixture(autouse=True)
def _environment_left_as_found():
    """A test that leaves this process's environment changed changes every stage the later tests start
    (Dask's nannies once left OMP_NUM_THREADS=1 here, and the whole-DAG project trained on one thread to
    other weights): fail the test that does it. Runs after the test's own fixtures undo theirs."""
    before = dict(os.environ)
    yield
    changed = {k: (before.get(k), os.environ.get(k)) for k in set(before) | set(os.environ)
               if before.get(k) != os.environ.get(k) and not k.startswith(("_", "PYTEST_"))  # libraries' own
               and not (k in SET_ONCE_BY_LIBRARIES and k not in before)}
    for name in changed:
        if name in before:
            os.environ[name] = before[name]
        else:
            del os.environ[name]
    assert not changed, f"the test left the environment changed (name: (before, after)): {changed}"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """``name`` under the test run's directory, made by ``build`` once per run, by whichever pytest-xdist worker
    needs it first: the others wait for it, then read it (a session or module fixture would run on every worker)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, shared by its workers
    made, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.is_file():
            raise AssertionError(failed.read_text())
        if not done.is_file():
            try:
                build(made)
            except BaseException as exc:  # the other workers then fail at once with this, not on a half-made dir
                failed.write_text(f"building the shared {name} failed: {type(exc).__name__}: {exc}")
                raise
            done.touch()
    return made


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy taken through the whole DAG once with `dvc repro` (the users' first door); tests that
    change anything in it (a dvc command included: DVC writes state in a repo it looks at) change a
    ``copy_built`` copy. Built once per test run, by whichever worker needs it first."""
    return built_once(tmp_path_factory, "built", lambda built: _build(built / "project")) / "project"


def params_trace(built_project: Path) -> Path:
    """Where the built project's stages recorded the params keys they read (tests/params_trace)."""
    return built_project.parent / "params_trace"


def _build(project: Path) -> None:
    make_project(project)
    params_trace(project).mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(map(str, (REPO / "tests" / "params_trace", project / "src", project))),
           "PARAMS_TRACE_DIR": str(params_trace(project))}
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            log, _ = proc.communicate()
        finally:
            if proc.poll() is None:  # interrupted (a timeout, ^C): no stage of it goes on writing
                os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        raise AssertionError(f"dvc repro failed:\n{log[-10000:]}")
    (project / "repro.log").write_text(log)


def copy_built(built_project: Path, dest: Path) -> Path:
    """A copy of the built project that is its own: its MLflow experiment logs artifacts into the copy (the
    store records an absolute location), not into the project other tests are copying or reading."""
    import sqlite3

    shutil.copytree(built_project, dest, symlinks=True)
    with contextlib.closing(sqlite3.connect(dest / "mlflow.db")) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?",
                   ((dest / "mlartifacts").resolve().as_uri(), (built_project / "mlartifacts").resolve().as_uri()))
    return dest


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's test harness: a real, throw-away local API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def project_on_path(tmp_path: Path):
    """A fresh project copy whose ``flows`` package is the one imported."""
    project = make_project(tmp_path / "project")
    sys.path.insert(0, str(project))
    forget_flows()
    yield project
    sys.path.remove(str(project))
    forget_flows()


def forget_flows() -> None:
    """Drop imported ``flows`` modules so the next import comes from the project now on sys.path."""
    for name in [m for m in sys.modules if m == "flows" or m.startswith("flows.")]:
        del sys.modules[name]


def tiny_model_dir(root: Path, dropout: float = 0.1) -> Path:
    """A tiny CLIP model dir (test_vit + 2-layer BERT, seeded weights) under ``root``/clip."""
    import json

    import torch

    from biomedclip_factory.model.build import ModelSpec, create_model, init_model_dir, save_weights
    from biomedclip_factory.model.tokenizer import train_wordpiece

    train_wordpiece(CAPTIONS, root / "tok", vocab_size=300, min_frequency=1, lowercase=True, model_max_length=32)
    spec = ModelSpec(embed_dim=32, timm_model_name="test_vit", context_length=32, text_layers=2, text_width=64,
                     text_heads=2, text_mlp_ratio=2)
    init_model_dir(spec, root / "tok", root / "clip")
    text_config = json.loads((root / "clip" / "config.json").read_text())
    text_config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    (root / "clip" / "config.json").write_text(json.dumps(text_config))
    torch.manual_seed(0)
    save_weights(create_model(root / "clip", load_weights=False), root / "clip")
    return root / "clip"
