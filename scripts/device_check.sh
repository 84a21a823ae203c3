#!/usr/bin/env bash
# The GPU check, prepared in advance. On the lent machine (one H200, 16 cores, Python 3.12 with torch,
# torchvision, timm and transformers, no package index) run from the repository root, with the
# wheelhouse carried along (`make wheelhouse` builds it here):
#
#     bash scripts/device_check.sh              # writes $OUT/device_check.jsonl (or ./device_check.jsonl)
#     bash scripts/device_check.sh --dry-run    # this CPU, tiny sizes: `make device-dry-run`
#
# Steps: install the missing wheels → the CUDA tests → the training benchmark at the paper profile
# (ViT-B/16 224, BERT-base, context 256, bf16: pairs/s, FLOPs per pair, measured bf16 peak, MFU) →
# the loader benchmark on the host's cores at the paper's shard sizes. Each JSON line is printed and
# kept; a step that fails or overruns its time is reported and the rest still run. ~8 minutes on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-.}
RESULTS="$OUT_DIR/device_check.jsonl"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
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
}

if [[ $DRY == 1 ]]; then
    # The wheelhouse against a real Python 3.12: every pin has a wheel that installs there.
    PY312=${PYTHON312:-$(command -v pyenv > /dev/null && PYENV_VERSION=3.12 pyenv which python3.12 || echo python3.12)}
    step wheelhouse 120 "$PY312" -m pip install --dry-run --quiet --no-index --no-deps --ignore-installed \
        --find-links wheelhouse --target "$(mktemp -d)" -r scripts/device-requirements.txt
else
    step install 180 "$PY" -m pip install --quiet --no-index --find-links wheelhouse -r scripts/device-requirements.txt
fi
step imports 120 "$PY" -c "import torch, deepspeed, open_clip, webdataset, pyarrow, timm, transformers, json; \
print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), \
'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'deepspeed': deepspeed.__version__}))"
if [[ $DRY == 1 ]]; then  # here the CUDA tests skip; the same selection runs
    step cuda_tests 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_gpu_evaluation.py -k "gpu or cuda" -rs
    step train 300 "$PY" benchmarks/train.py --profile params.yaml --batch 8 --steps 2 --rounds 1
    step loader 300 "$PY" benchmarks/loader.py --workers 1 --batch-size 8 --batches 3 --samples 48
else
    step cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_gpu_evaluation.py -k "gpu or cuda" -rs
    step train 300 "$PY" benchmarks/train.py --profile params/biomedclip.yaml --batch 512 --steps 10 --rounds 2
    step loader 120 "$PY" benchmarks/loader.py --workers 8 --batch-size 256 --batches 12 --samples 2048
fi
echo "device_check: results in $RESULTS"
exit $failed
