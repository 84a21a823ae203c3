# Two targets, both running the README's commands (`make run`, `make test`):
#   docker build --target cpu -t biomedclip-factory:cpu .   # the embedded default on CPU
#   docker build --target gpu -t biomedclip-factory:gpu .   # GPU training, DeepSpeed ops prebuilt
#   docker run --gpus all -v $PWD/data:/app/data biomedclip-factory:gpu \
#       .venv/bin/deepspeed --num_gpus 8 --module stages.pretrain --shards data/shards --tokenizer models/tokenizer \
#       --checkpoints models/checkpoints --model models/clip --metrics metrics/pretrain.json --plot plots/pretrain_loss.csv

FROM python:3.11-slim AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl git make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements-test.txt constraints.txt pyproject.toml Makefile ./
COPY scripts ./scripts
COPY src ./src
RUN make venv
COPY . .
ENV PATH="/app/.venv/bin:${PATH}" DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true
CMD ["make", "run"]

# CUDA 13 devel image: torch 2.14.1's wheels are CUDA 13 builds, and nvcc compiles DeepSpeed's ops.
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu22.04 AS gpu
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl git make \
       python3.11 python3.11-dev python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
# DeepSpeed's fused Adam, CPU Adam and utils ops prebuilt for Ampere and Hopper (H100/H200),
# so no rank JIT-compiles at start-up.
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0"
WORKDIR /app
COPY requirements.txt requirements-test.txt constraints.txt pyproject.toml Makefile ./
COPY scripts ./scripts
COPY src ./src
RUN make venv PYTHON=python3.11 \
    && DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 \
       .venv/bin/pip install --no-cache-dir --no-build-isolation --no-deps --force-reinstall \
       "deepspeed==$(grep -i '^deepspeed==' constraints.txt | cut -d= -f3)"
COPY . .
ENV PATH="/app/.venv/bin:${PATH}" DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true
CMD ["make", "run"]
