"""dvc.yaml cannot go stale: each stage's deps cover the project code it runs, its params the keys that matter.

A stage whose imported module is missing from its deps keeps an old result after that module is
edited (``dvc status``: nothing to do); a stage that depends on a whole params section reruns
hours of training when only its logging period changes. Both are computed here, not remembered.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from biomedclip_factory.library_versions import NEUTRAL, RESULT_LIBRARIES

REPO = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"biomedclip_factory": REPO / "src", "stages": REPO}

# Inputs a stage uses that no import shows: register packages the whole library into the
# registered model (``code_paths``), so an edit anywhere in it must make a new version.
PACKAGED = {"register": ["src/biomedclip_factory"]}

# Modules a stage runs that no import names: scoring a ``models:/`` entry (evaluate, and register's gate)
# unpickles the registered ``ClipPyfunc``, whose ``load_context`` is this project's registry code.
UNPICKLED = {"evaluate": ["biomedclip_factory.registry.pyfunc"], "register": ["biomedclip_factory.registry.pyfunc"]}

# Keys of a stage's own params section that change how fast or how visibly it runs, not what it
# produces (evaluate's batch size and workers move scores by float rounding at most: captions are
# padded to each batch's longest): listing them would rerun the stage (hours of pretraining) for nothing.
OPERATIONAL = {
    "scrape": {"workers", "runner", "timeout_s", "retries", "rate_limit"},
    "align": {"workers", "runner"},
    "pretrain": {"log_every", "prefetch_factor", "grad_checkpointing", "offload_optimizer", "zero_stage",
                 "text_buckets", "text_packing", "compile"},
    "evaluate": {"batch_size", "num_workers"},
}


def module_file(module: str) -> Path | None:
    """The source file of a project module (``None`` for third-party and standard-library modules)."""
    top = module.split(".")[0]
    if top not in PROJECT_PACKAGES:
        return None
    base = PROJECT_PACKAGES[top].joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Modules named by every import in ``path`` (function-local ones too), relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import submodule``
    return names


def is_inert(path: Path) -> bool:
    """A file of docstrings and constant assignments only: nothing in it can change a result."""
    return all(isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant)
               for node in ast.parse(path.read_text()).body)


def _walk(entry: str) -> tuple[set[Path], set[str]]:
    """The project files importing ``entry`` may execute, and the top-level names of the other modules they import."""
    seen: set[Path] = set()
    others: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module_file(module.split(".")[0]) is None:
            others.add(module.split(".")[0])
            continue
        for i in range(1, module.count(".") + 2):  # importing a.b.c runs a, a.b, a.b.c
            prefix = ".".join(module.split(".")[:i])
            path = module_file(prefix)
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imports(path, prefix))
    return seen, others


def project_files(entry: str) -> set[Path]:
    """Every project source file that importing ``entry`` may execute, parent packages' ``__init__`` too
    unless inert (a docstring and ``__version__``: a version bump need not retrain)."""
    return {p for p in _walk(entry)[0] if not (p.name == "__init__.py" and is_inert(p))}


def uncovered(stage: str, spec: dict) -> list[str]:
    """Files ``stage`` runs or packages that none of its deps (a file, or a folder above it) covers."""
    deps = [REPO / d for d in spec["deps"]]
    entries = [f"stages.{stage}", *UNPICKLED.get(stage, [])]
    needed = {p.relative_to(REPO).as_posix() for entry in entries for p in project_files(entry)} \
        | set(PACKAGED.get(stage, []))
    return sorted(f for f in needed if not any((REPO / f) == d or d in (REPO / f).parents for d in deps))


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


STAGES = sorted(dvc_stages())


@pytest.mark.parametrize("stage", STAGES)
def test_deps_cover_every_module_the_stage_imports(stage: str) -> None:
    assert uncovered(stage, dvc_stages()[stage]) == [], f"add these to dvc.yaml's {stage} deps"


def overbroad(stage: str, spec: dict) -> list[str]:
    """Modules inside a folder dep of ``stage`` that it neither runs nor packages: an edit to one would rerun
    the stage (days of pretraining for a tokenizer fix) for a result that cannot change."""
    needed = {p for entry in [f"stages.{stage}", *UNPICKLED.get(stage, [])] for p in project_files(entry)}
    folders = [REPO / d for d in spec["deps"] if (REPO / d).is_dir() and d not in PACKAGED.get(stage, [])]
    return sorted(f.relative_to(REPO).as_posix() for folder in folders for f in folder.rglob("*.py")
                  if f not in needed and not (f.name == "__init__.py" and is_inert(f)))


@pytest.mark.parametrize("stage", STAGES)
def test_no_folder_dep_covers_a_module_the_stage_never_runs(stage: str) -> None:
    assert overbroad(stage, dvc_stages()[stage]) == [], f"list {stage}'s deps file by file"


def test_an_overbroad_folder_dep_is_caught() -> None:
    spec = dvc_stages()["pretrain"]
    spec["deps"] = [d for d in spec["deps"] if not d.startswith("src/biomedclip_factory/model/")]
    spec["deps"].append("src/biomedclip_factory/model")
    assert "src/biomedclip_factory/model/wordpiece.py" in overbroad("pretrain", spec)


def test_bytecode_in_a_code_dep_is_not_hashed() -> None:
    """Importing the package writes ``__pycache__`` into the code deps' folders on a user's machine;
    DVC does not read .gitignore, so unless .dvcignore names it, ``dvc repro`` retrains for nothing."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        folders = {REPO / d for spec in dvc_stages().values() for d in spec["deps"] if (REPO / d).is_dir()}
        assert folders, "no folder deps to check"
        for folder in folders:
            assert repo.dvcignore.is_ignored_file(str(folder / "__pycache__" / "x.cpython-311.pyc")), folder
            assert repo.dvcignore.is_ignored_file(str(folder / "x.pyc")), folder
            assert not repo.dvcignore.is_ignored_file(str(folder / "x.py")), folder


def test_a_removed_dep_is_caught() -> None:
    spec = dvc_stages()["pretrain"]
    spec["deps"] = [d for d in spec["deps"] if d != "src/biomedclip_factory/io.py"]
    assert "src/biomedclip_factory/io.py" in uncovered("pretrain", spec)
    register = dvc_stages()["register"]
    register["deps"] = [d for d in register["deps"] if d != "src/biomedclip_factory"]
    assert "src/biomedclip_factory" in uncovered("register", register)


def test_import_walk_follows_relative_and_lazy_imports() -> None:
    files = {p.relative_to(REPO).as_posix() for p in project_files("stages.pretrain")}
    assert {"stages/common.py", "src/biomedclip_factory/io.py", "src/biomedclip_factory/train/loop.py",
            "src/biomedclip_factory/shards/loader.py"} <= files
    assert not any("pmc/" in f for f in files)  # pretrain never runs the scraper: it must not rerun on its edits


def test_package_inits_are_inert_or_listed() -> None:
    """An ``__init__`` that gained code is no longer skipped: the deps test then asks for it."""
    inert = REPO / "src/biomedclip_factory/__init__.py"
    assert is_inert(inert) and inert not in project_files("stages.pretrain")
    assert not is_inert(REPO / "stages/common.py")


def imported_distributions(stage: str) -> set[str]:
    """The installed distributions (canonical names) whose modules ``stage`` runs, the standard library aside."""
    tops = set().union(*(_walk(entry)[1] for entry in [f"stages.{stage}", *UNPICKLED.get(stage, [])]))
    providers = importlib.metadata.packages_distributions()
    return {canonicalize_name(dist) for top in tops - set(sys.stdlib_module_names) - {"__future__"}
            for dist in providers.get(top, [top])}


def unrecorded_libraries(stage: str, recorded: dict[str, tuple[str, ...]]) -> list[str]:
    """Libraries ``stage`` imports whose versions its record leaves out, though not declared neutral: an
    upgrade of one would leave the stage's old output standing."""
    known = {canonicalize_name(name) for name in (*recorded.get(stage, ()), *NEUTRAL)}
    return sorted(imported_distributions(stage) - known)


RECORDED = [s for s in STAGES if not dvc_stages()[s].get("always_changed")]


@pytest.mark.parametrize("stage", RECORDED)
def test_each_library_a_stage_imports_is_in_its_record_or_neutral(stage: str) -> None:
    assert unrecorded_libraries(stage, RESULT_LIBRARIES) == [], \
        "add these to library_versions.RESULT_LIBRARIES (or to NEUTRAL, saying why no output depends on them)"
    assert f"data/inputs/{stage}.json" in _paths(dvc_stages()[stage]["deps"]), f"{stage} must depend on its record"


def test_every_stage_that_can_go_stale_has_a_library_record_and_a_missing_library_is_caught() -> None:
    assert set(RESULT_LIBRARIES) == set(RECORDED)
    assert {f"data/inputs/{stage}.json" for stage in RECORDED} <= _paths(dvc_stages()["inputs"]["outs"])
    without_pillow = {**RESULT_LIBRARIES, "align": tuple(d for d in RESULT_LIBRARIES["align"] if d != "pillow")}
    assert unrecorded_libraries("align", without_pillow) == ["pillow"]
    assert "imagehash" in imported_distributions("align")  # a distribution named unlike its module (ImageHash)


# What a stage keeps between runs to resume, neither a dep nor an out (dvc.yaml's header says why).
RUN_STATE = {"align": {"data/align_journal"}, "pretrain": {"models/checkpoints"}, "inputs": {"data/inputs_digests.json"}}


def _paths(entries: list) -> set[str]:
    """The paths of a deps/outs/metrics/plots list (plain strings or one-key dicts with options)."""
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def command_paths(spec: dict, stage: str) -> set[str]:
    cmd = shlex.split(spec["cmd"])
    assert cmd[:3] == ["python", "-m", f"stages.{stage}"], cmd
    flags, values = cmd[3::2], cmd[4::2]
    assert len(flags) == len(values) and all(f.startswith("--") for f in flags), f"{stage}: --name PATH pairs: {cmd}"
    return set(values)


@pytest.mark.parametrize("stage", STAGES)
def test_the_command_passes_every_output_and_only_declared_paths(stage: str) -> None:
    """Paths live in dvc.yaml alone: the command hands the stage each output, and nothing DVC does not track
    (or that is not the stage's run state)."""
    spec = dvc_stages()[stage]
    passed = command_paths(spec, stage)
    outs = _paths(spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []))
    assert outs - passed == set(), f"{stage} writes these without being told where"
    assert passed - outs - _paths(spec["deps"]) - RUN_STATE.get(stage, set()) == set(), f"{stage}: undeclared paths"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_names_a_project_path_itself(stage: str) -> None:
    tops = {p.split("/")[0] for name, spec in dvc_stages().items() for p in command_paths(spec, name)}
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    joined = {side.value for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              for side in (node.left, node.right) if isinstance(side, ast.Constant)}  # ROOT / "data" / ...
    spelled = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and "/" in node.value}  # "data/raw"
    named = {s for s in joined | spelled if isinstance(s, str) and s.split("/")[0] in tops}
    assert named == set(), f"stages/{stage}.py: take {named} from the command"


def _sections_loaded(stage: str) -> set[str]:
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_section"
            and node.args and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize("stage", STAGES)
def test_params_listed_key_by_key(stage: str) -> None:
    """Own section: every key that changes results listed (alone), no operational key listed.
    Another section read: the keys read listed (so some key of it must appear)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    listed = [p for p in dvc_stages()[stage].get("params", []) if isinstance(p, str)]
    assert stage not in listed, f"{stage}: list its params key by key, not the whole section"
    keys = {p.split(".")[1] for p in listed if p.startswith(f"{stage}.")}
    operational = OPERATIONAL.get(stage, set())
    assert keys & operational == set(), f"{stage}: operational keys listed as deps"
    assert set(params.get(stage, {})) - operational - keys == set(), f"{stage}: result keys missing from dvc.yaml params"
    for section in _sections_loaded(stage) - {stage}:
        assert any(p == section or p.startswith(f"{section}.") for p in listed), f"{stage} reads '{section}'"


def unlisted_reads(stage: str, read: set[str], listed: list[str]) -> list[str]:
    """Keys ``stage`` read that no listed param covers (itself or a section above it) and that are not
    operational keys of its own section."""
    def covered(key: str) -> bool:
        section, _, rest = key.partition(".")
        return any(key == p or key.startswith(f"{p}.") for p in listed) or \
            (section == stage and rest.split(".")[0] in OPERATIONAL.get(stage, set()))
    return sorted(k for k in read if not covered(k))


def _keys_read(built_project: Path, stage: str) -> set[str]:
    from .conftest import params_trace

    return set().union(*(json.loads(f.read_text()) for f in params_trace(built_project).glob(f"{stage}.*.json")))


@pytest.mark.slow  # on the project the whole DAG built
@pytest.mark.parametrize("stage", [s for s in STAGES if not dvc_stages()[s].get("always_changed")])
def test_every_params_key_a_stage_read_while_building_is_a_dependency(built_project: Path, stage: str) -> None:
    """What the key-by-key test cannot see: keys read by library code, of other sections, and below the top
    level, as ``dvc repro`` ran them (tests/params_trace records every ``Section`` read). Branches the embedded
    default does not take (another scrape layout, a tokenizer dir) are not seen here either."""
    read = _keys_read(built_project, stage)
    assert read, f"no trace of {stage}'s params reads: tests/params_trace did not run"
    assert unlisted_reads(stage, read, dvc_stages()[stage].get("params", [])) == [], f"add to dvc.yaml's {stage} params"


@pytest.mark.slow
def test_a_params_key_read_but_not_listed_is_caught(built_project: Path) -> None:
    read, listed = _keys_read(built_project, "tokenizer"), dvc_stages()["tokenizer"]["params"]
    assert "model.text.context_length" in read  # read through the model section, from the tokenizer stage
    assert unlisted_reads("tokenizer", read, [p for p in listed if p != "model.text.context_length"]) == \
        ["model.text.context_length"]
    assert "align.split.salt" in unlisted_reads("align", _keys_read(built_project, "align"), ["align.split.ratios"])


@pytest.mark.parametrize("profile", ["params.yaml", *sorted(p.relative_to(REPO).as_posix()
                                                              for p in (REPO / "params").glob("*.yaml"))])
def test_every_profile_has_every_listed_param(profile: str) -> None:
    """DVC refuses to run a stage whose listed param is missing: a profile copied over params.yaml
    must hold every key dvc.yaml names, defaults included."""
    params = yaml.safe_load((REPO / profile).read_text())
    for stage, spec in dvc_stages().items():
        for path in spec.get("params", []):
            node = params
            for part in path.split("."):
                assert isinstance(node, dict) and part in node, f"{profile} lacks '{path}' ({stage} lists it)"
                node = node[part]


def test_stage_paths_take_deepspeeds_rank_argument_and_refuse_the_project_itself(capsys) -> None:
    """DeepSpeed's launcher appends ``--local_rank=N`` to every rank's command; ``--model .`` would swap the
    project for a model dir."""
    from stages.common import ROOT, relative_to_project, stage_paths

    args = stage_paths("pretrain", ("model",), ["--model", "models/clip", "--local_rank=3"])
    assert args.model == ROOT / "models" / "clip" and relative_to_project(args.model) == "models/clip"
    assert stage_paths("pretrain", ("model",), ["--model", "/elsewhere/clip"]).model == Path("/elsewhere/clip")
    for bad in (".", "", "..", "models/.."):
        with pytest.raises(SystemExit):
            stage_paths("pretrain", ("model",), ["--model", bad])
        assert "is the project or above it" in capsys.readouterr().err
