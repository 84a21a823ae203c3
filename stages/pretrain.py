"""DVC stage: train the CLIP through DeepSpeed → models/clip (open_clip local-dir format).

Single process by default (the CPU embedded default). For several ranks or nodes launch the same
module with DeepSpeed's launcher: ``deepspeed --num_gpus 8 --module stages.pretrain``.
"""
from __future__ import annotations

import shutil
from contextlib import nullcontext

import mlflow
import torch

from biomedclip_factory.errors import DataError
from biomedclip_factory.io import append_log_row, read_jsonl, replace_dir, write_csv_atomic, write_json_atomic
from biomedclip_factory.model.build import ModelSpec, init_sources, relocate
from biomedclip_factory.model.start import lay_out_start
from biomedclip_factory.params import load_section
from biomedclip_factory.shards.loader import split_size
from biomedclip_factory.tracking import stage_run
from biomedclip_factory.train.ds_config import TrainConfig
from biomedclip_factory.train.loop import distributed, pretrain
from biomedclip_factory.train.resume import RunState, run_fingerprint

from .common import ROOT, run_stage, summary

SHARDS = ROOT / "data" / "shards"
TOKENIZER = ROOT / "models" / "tokenizer"
MODEL = ROOT / "models" / "clip"
STAGING = MODEL.with_name("clip.tmp")  # built and trained here, then put in MODEL's place
CHECKPOINTS = ROOT / "models" / "checkpoints"


def main() -> None:
    p, m = load_section("pretrain", ROOT / "params.yaml"), load_section("model", ROOT / "params.yaml")
    if not (TOKENIZER / "tokenizer.json").is_file():
        raise DataError(f"pretrain: {TOKENIZER} has no vocabulary (run the tokenizer stage)")
    train_samples = split_size(SHARDS, "train")
    if train_samples == 0:
        raise DataError(f"pretrain: the train split in {SHARDS} is empty")
    spec, (init_dir, text_init) = ModelSpec.from_params(m), init_sources(m, ROOT)
    cfg = TrainConfig.from_params(p, train_samples, torch.distributed.get_world_size())
    rank = torch.distributed.get_rank()
    state = RunState(CHECKPOINTS)
    if rank == 0:
        shutil.rmtree(STAGING, ignore_errors=True)
        torch.manual_seed(cfg.seed)  # the image tower's init when only the text tower is pretrained
        lay_out_start(spec, init_dir, text_init, TOKENIZER, STAGING)
        # Only now, with the starting model built and checked, may a changed run clear old checkpoints.
        state.prepare(run_fingerprint(spec, cfg, (init_dir, text_init), TOKENIZER / "tokenizer.json", SHARDS), cfg.steps)
    torch.distributed.barrier()  # every rank builds its model from the dir rank 0 just wrote

    def log(step: int, values: dict[str, float]) -> None:
        with state.loss_log.open("ab") as f:
            append_log_row(f, {"step": step, "loss": values["loss"]})
        mlflow.log_metrics(values, step=step)
        print(f"pretrain: step {step}/{cfg.steps} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()), flush=True)

    tracking = stage_run("pretrain", ROOT, {**p.raw(), "model": spec.__dict__, "init_from": str(init_dir or "scratch"),
                                            "text_init_from": str(text_init or "scratch")}) if rank == 0 else nullcontext()
    with tracking as run:  # one MLflow run, owned by rank 0
        result = pretrain(STAGING, SHARDS, CHECKPOINTS, cfg, log)
        if rank == 0:  # the trained model replaces the last one only now: a failed run leaves that intact
            replace_dir(STAGING, MODEL)
            relocate(MODEL)
            metrics = {"steps": result.steps, "resumed_from": result.resumed_from, "final_loss": result.final_loss,
                       "samples_per_s": result.samples_per_s, "tokens_per_s": result.tokens_per_s,
                       "train_samples": train_samples,
                       "skipped_samples": result.skipped_samples}
            write_json_atomic(ROOT / "metrics" / "pretrain.json", {**metrics, "mlflow_run_id": run.info.run_id})
            write_csv_atomic(ROOT / "plots" / "pretrain_loss.csv",
                             [{"step": r["step"], "loss": r["loss"]} for r in read_jsonl(state.loss_log)])
            mlflow.log_metrics({"final_loss": result.final_loss, "samples_per_s_total": result.samples_per_s})
    if rank == 0:
        summary("pretrain", result.samples, result.steps, 0, result.seconds, "samples")


if __name__ == "__main__":
    with distributed():  # every rank joins, and leaves cleanly however the stage ends
        run_stage("pretrain", main)
