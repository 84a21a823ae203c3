#!/usr/bin/env bash
# The GPU check, prepared in advance. On the lent machine (one H200, 16 cores, Python 3.12 with torch,
# torchvision, timm and transformers, no package index) run from the repository root, with the
# wheelhouse carried along (`make wheelhouse` builds it here):
#
#     bash scripts/device_check.sh              # writes $OUT/device_check.jsonl (or ./device_check.jsonl)
#     bash scripts/device_check.sh --dry-run    # this CPU, tiny sizes: `make device-dry-run`
#
# Steps, 8 minutes at most in all: install the missing wheels → imports and a torch.compile
# smoke test → the training benchmark at the paper profile (ViT-B/16 224, BERT-base, context 256, bf16,
# micro-batch 512; synthetic batches of those sizes: pairs/s, FLOPs per pair, the bf16 matmul peak
# measured in the same run, MFU), compiled → the GPU tests (ZeRO stages and evaluation in bf16, training steps
# under sync debug mode). Each JSON line is printed and kept; a step that fails or overruns its limit is
# reported and the rest still run.
# The loader is measured per worker on CPU (benchmarks/loader.py): it needs pandas and pyarrow,
# which the 64 MiB the device tool carries cannot hold beside the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-.}
RESULTS="$OUT_DIR/device_check.jsonl"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} \
    PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # both loops' models share one GPU
: > "$RESULTS"
failed=0

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, keep its JSON lines
    local name=$1 limit=$2 log="$OUT_DIR/device_check.$1.log" t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    grep -E '^\{' "$log" | tee -a "$RESULTS"
    tail -n 3 "$log"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$RESULTS"
    [[ $rc == 0 ]] || failed=1
    return $rc
}

if [[ $DRY == 1 ]]; then
    # The wheelhouse against a real Python 3.12: every pin has a wheel that installs there.
    PY312=${PYTHON312:-$(command -v pyenv > /dev/null && PYENV_VERSION=3.12 pyenv which python3.12 || echo python3.12)}
    step wheelhouse 60 "$PY312" -m pip install --dry-run --quiet --no-index --no-deps --ignore-installed \
        --find-links wheelhouse --target "$(mktemp -d)" -r scripts/device-requirements.txt -r scripts/device-fallbacks.txt
else  # with dependencies, resolved against what the machine has; the fallbacks only where it lacks them
    step install 30 "$PY" -m pip install --quiet --no-index --find-links wheelhouse -r scripts/device-requirements.txt
fi
COMPILE=--compile
step imports 40 "$PY" -c "import json, torch, deepspeed, open_clip, webdataset, pytest, timm, transformers
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
ok = bool((torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=dev)) == 3).all())
print(json.dumps({'torch': torch.__version__, 'deepspeed': deepspeed.__version__, 'device':
      torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu', 'compile_ok': ok}))" || COMPILE=--no-compile
# The profile's way (compiled) at real captions' token counts where `make wheelhouse` could write them (it
# reads ../shared/data/text), its packed captions timed against 1 length group (every caption at the context),
# 4 and 12 on the same engine (the dry run, on params.yaml, times packing against them); each round's rates printed as it ends. Then the tests.
LENGTHS=(); [[ -f wheelhouse/caption_lengths.json ]] && LENGTHS=(--caption-lengths wheelhouse/caption_lengths.json)
if [[ $DRY == 1 ]]; then  # tiny sizes; no compile (minutes of inductor on this CPU); the GPU tests skip
    TRAIN=(benchmarks/train.py --profile params.yaml --batch 8 --steps 2 --rounds 1)
    COMPILE=--no-compile
else
    TRAIN=(benchmarks/train.py --profile params/biomedclip.yaml --batch 512 --steps 10 --rounds 3)
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
fi
step train_profile 270 "$PY" "${TRAIN[@]}" "$COMPILE" "${LENGTHS[@]}" --also-text-layouts 1,4,12,pack
step gpu_tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs -k "not never_waits"
step sync_test 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs -k never_waits  # compiles: apart
echo "device_check: results in $RESULTS"
exit $failed
