"""Which checkpoints a pretraining run may resume from, and the loss log that spans its resumes."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..digest import DigestCache, tree_digest
from ..io import read_append_log, write_bytes_atomic, write_jsonl_atomic
from ..model.build import ModelSpec
from ..shards.loader import split_digests
from .ds_config import TrainConfig
from .loop import checkpoint_step


# Settings a crashed run may resume under changed: how fast or how visibly it runs, not what it
# computes or how its checkpoints are laid out (ZeRO stage and offload are, and stay in).
RESUMABLE_ACROSS = ("log_every", "prefetch_factor", "grad_checkpointing", "compile", "text_buckets", "text_packing")


def run_fingerprint(spec: ModelSpec, cfg: TrainConfig, init: tuple[Path | None, Path | None], vocabulary: Path,
                    shard_dir: Path, world_size: int) -> str:
    """What a run's checkpoints belong to: model, recipe, ranks, starting point, vocabulary, train shards
    and the code that trains."""
    recipe = {k: v for k, v in cfg.__dict__.items() if k not in RESUMABLE_ACROSS}
    # a starting dir by its content: other weights copied in restart the run; a moved one resumes it
    starts = [tree_digest(i, DigestCache(), "start")["sha256"] if i is not None else "None" for i in init]
    blob = json.dumps([spec.__dict__, recipe, world_size, vocabulary.read_text(), starts,
                       split_digests(shard_dir).get("train", ""), training_code_digest()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def training_code_digest() -> str:
    """The source of every module of this package the process has loaded (the stage imports all it uses
    at its top). A run killed, its loop or loss fixed and the stage rerun must not resume: its first
    steps came from the old code, and DVC records the result under the new code's hash, as if it had
    trained it all. So a resume needs the code the checkpoints were written by, as align's journal does."""
    package = __name__.split(".")[0]
    root = Path(str(sys.modules[package].__file__)).parent
    files = sorted(Path(str(module.__file__)).relative_to(root).as_posix() for name, module in list(sys.modules.items())
                   if name.split(".")[0] == package and getattr(module, "__file__", None))
    digest = hashlib.sha256()
    for file in files:  # by path inside the package: a moved checkout resumes
        digest.update(file.encode() + b"\0" + (root / file).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunState:
    """A run's checkpoints and loss log, kept in ``checkpoints`` between invocations of the stage."""

    checkpoints: Path

    @property
    def loss_log(self) -> Path:
        return self.checkpoints / "loss.jsonl"

    @property
    def _tracked_run(self) -> Path:
        return self.checkpoints / "mlflow_run"

    def tracked_run(self) -> str | None:
        """The MLflow run the kept checkpoints were trained under: a resume continues it (``prepare`` clears it
        with them, so a run started over gets a run of its own)."""
        if not self._tracked_run.is_file():
            return None
        return self._tracked_run.read_text().strip() or None

    def remember_run(self, run_id: str) -> None:
        write_bytes_atomic(self._tracked_run, run_id.encode())

    def prepare(self, fingerprint: str, steps: int) -> int:
        """The step to resume from (0: start over, the checkpoints cleared), the loss log cut back to it.

        Checkpoints are kept only for an unfinished run of this exact fingerprint. Without the data in
        it, new PMC pairs under a fixed vocabulary would resume the old finished run and train
        nothing; a finished run is not resumed either: DVC reruns the stage when its code changed (or
        on ``-f``), and that asks for a model trained by the current code. The loss log then covers
        the whole run (a DVC plot), not just what came after a resume.
        """
        stamp = self.checkpoints / "fingerprint"
        same_run, step = stamp.is_file() and stamp.read_text() == fingerprint, checkpoint_step(self.checkpoints)
        if not (same_run and 0 < step < steps):  # nothing to resume (garbage too) clears
            if step:  # say why hours of checkpoints go
                why = "finished" if same_run else "of another recipe, data, vocabulary, number of ranks, start or code"
                print(f"pretrain: the checkpoints in {self.checkpoints} are of a run {why}: starting over", flush=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            write_bytes_atomic(stamp, fingerprint.encode())
        resume = checkpoint_step(self.checkpoints)
        write_jsonl_atomic(self.loss_log, [r for r in read_append_log(self.loss_log) if r["step"] <= resume])
        return resume
