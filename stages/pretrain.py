"""DVC stage: train the CLIP through DeepSpeed → models/clip (open_clip local-dir format).

Single process by default (the CPU embedded default). For several ranks or nodes launch the same
command with DeepSpeed's launcher: ``deepspeed --num_gpus 8 --module stages.pretrain <dvc.yaml's args>``.
"""
from __future__ import annotations

from argparse import Namespace
from contextlib import nullcontext

import torch

from biomedclip_factory.io import write_csv_atomic, write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.tracking import BackgroundMetrics, stage_run
from biomedclip_factory.train.process_group import distributed
from biomedclip_factory.train.run import PretrainRun

from .common import ROOT, run_stage, summary


def main(a: Namespace) -> None:
    p, m = load_section("pretrain", ROOT / "params.yaml"), load_section("model", ROOT / "params.yaml")
    run = PretrainRun.from_params(p, m, ROOT, a.tokenizer, a.shards, a.checkpoints, a.model)
    rank, model = torch.distributed.get_rank(), run.start()

    tracking = stage_run("pretrain", ROOT, run.tracked_params(p), continues=run.state.tracked_run()) \
        if rank == 0 else nullcontext()
    with tracking as tracked:
        # one MLflow run, owned by rank 0, across resumes; an outage of its server neither stalls nor ends days
        # of training
        metrics_out = None
        if rank == 0:
            run.state.remember_run(tracked.info.run_id)
            metrics_out = BackgroundMetrics("pretrain", tracked.info.run_id)

        def log(step: int, values: dict[str, float]) -> None:
            metrics_out.log(values, step)
            print(f"pretrain: step {step}/{run.cfg.steps} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()),
                  flush=True)

        try:
            result = run.train(model, log)
            if rank == 0:
                metrics = {**result.metrics(), "train_samples": run.train_samples}
                write_json_atomic(a.metrics, {**metrics, "mlflow_run_id": tracked.info.run_id})
                write_csv_atomic(a.plot, run.loss_rows())
                metrics_out.log({"final_loss": result.final_loss, "samples_per_s_total": result.samples_per_s},
                                result.steps)
        finally:  # what is queued reaches the run before it ends, however training ended
            if metrics_out is not None:
                metrics_out.close()
    if rank == 0:
        summary("pretrain", result.samples, result.steps, 0, result.seconds, "samples")


if __name__ == "__main__":
    with distributed():  # every rank joins, and leaves cleanly however the stage ends
        run_stage("pretrain", main, ("shards", "tokenizer", "checkpoints", "model", "metrics", "plot"))
