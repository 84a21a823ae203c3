"""One pretraining run as the pretrain stage makes it: checked inputs, the starting model, resumable
checkpoints, the loss log, and the trained model put in place only when training ends."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..io import append_log_row, read_jsonl, relative_to, replace_dir
from ..model.build import ModelSpec, create_model, relocate
from ..model.sources import init_sources
from ..model.start import start_model
from ..params import Section
from ..shards.loader import split_size
from .ds_config import TrainConfig
from .loop import LogFn, TrainSummary, pretrain
from .resume import RunState, run_fingerprint


@dataclass(frozen=True)
class PretrainRun:
    spec: ModelSpec
    cfg: TrainConfig
    init: tuple[Path | None, Path | None]  # (open_clip model dir, HF text tower dir); None = scratch
    tokenizer: Path
    shards: Path
    model: Path  # the published model dir; training happens beside it, in ``staging``
    model_name: str  # how its config names it: relative to the project (the same bytes in every clone)
    state: RunState
    train_samples: int

    @classmethod
    def from_params(cls, p: Section, m: Section, root: Path, tokenizer: Path, shards: Path, checkpoints: Path,
                    model: Path) -> "PretrainRun":
        """The run the ``pretrain`` and ``model`` sections ask for; missing inputs fail here, before any output."""
        if not (tokenizer / "tokenizer.json").is_file():
            raise DataError(f"pretrain: {tokenizer} has no vocabulary (run the tokenizer stage)")
        train_samples = split_size(shards, "train")
        if train_samples == 0:
            raise DataError(f"pretrain: the train split in {shards} is empty")
        cfg = TrainConfig.from_params(p, train_samples, torch.distributed.get_world_size())
        return cls(ModelSpec.from_params(m), cfg, init_sources(m, root), tokenizer, shards, model,
                   relative_to(model, root), RunState(checkpoints), train_samples)

    @property
    def staging(self) -> Path:
        return self.model.with_name(f"{self.model.name}.tmp")

    def tracked_params(self, p: Section) -> dict[str, Any]:
        init_dir, text_init = self.init
        world = torch.distributed.get_world_size()
        return {**p.raw(), "model": self.spec.__dict__, "init_from": str(init_dir or "scratch"),
                "text_init_from": str(text_init or "scratch"), "world_size": world, "steps_resolved": self.cfg.steps,
                "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps,
                "global_batch": self.cfg.global_batch(world)}

    def start(self) -> torch.nn.Module:
        """The starting model on every rank. Rank 0 describes it in ``staging`` and only then, with the model
        built and checked, lets a changed run clear old checkpoints; DeepSpeed gives the others its weights."""
        rank = torch.distributed.get_rank()
        if rank == 0:
            shutil.rmtree(self.staging, ignore_errors=True)
            torch.manual_seed(self.cfg.seed)  # the seeded init of whatever does not come from a pretrained dir
            model = start_model(self.spec, *self.init, self.tokenizer, self.staging)
            self.state.prepare(run_fingerprint(self.spec, self.cfg, self.init, self.tokenizer / "tokenizer.json",
                                               self.shards, torch.distributed.get_world_size()), self.cfg.steps)
        torch.distributed.barrier()
        return model if rank == 0 else create_model(self.staging, load_weights=False)

    def train(self, model: torch.nn.Module, log: LogFn) -> TrainSummary:
        """Train, logging each reported step to the loss log too; the trained model then replaces the published
        one (a failed run leaves that intact)."""
        def logged(step: int, values: dict[str, float]) -> None:
            with self.state.loss_log.open("ab") as f:
                append_log_row(f, {"step": step, "loss": values["loss"]})
            log(step, values)

        result = pretrain(model, self.staging, self.shards, self.state.checkpoints, self.cfg, logged)
        if torch.distributed.get_rank() == 0:
            replace_dir(self.staging, self.model)
            relocate(self.model, self.model_name)
        return result

    def loss_rows(self) -> list[dict[str, float]]:
        """The loss at each logged step of the whole run, resumes included (the stage's plot)."""
        return [{"step": r["step"], "loss": r["loss"]} for r in read_jsonl(self.state.loss_log)]
