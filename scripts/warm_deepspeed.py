"""Compile DeepSpeed's CPU shared-memory comm op once, at install time.

DeepSpeed JIT-compiles it (~70 s on 2 cores) on the first ``deepspeed.init_distributed`` on a CPU
machine and caches it under ``~/.cache/torch_extensions``; doing it here keeps the first
``make run`` from stalling silently inside the pretrain stage.
"""
import torch
from deepspeed.comm.torch import build_shm_op

if not torch.cuda.is_available():
    print("warming DeepSpeed's CPU comm op (compiled once, ~1 min) …", flush=True)
    build_shm_op()
