# CPU image for the embedded default: the same two README commands (`make run`, `make test`).
# (A CUDA training target with prebuilt DeepSpeed ops is tracked in the registry/packaging issue.)
FROM python:3.11-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt constraints.txt pyproject.toml Makefile ./
COPY scripts ./scripts
COPY src ./src
RUN make venv
COPY . .
ENV PATH="/app/.venv/bin:${PATH}" DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
CMD ["make", "run"]
