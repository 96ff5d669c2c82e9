#!/usr/bin/env bash
# GPU figures for docs/BENCHMARKS.md, in one run on a machine with a CUDA card and PyTorch:
#   bench/gpu.sh MODELS_DIR OUT_DIR
# MODELS_DIR holds lab model folders; a folder without weights is measured with random weights of
# its config (bench/detect_cost.py --random-weights). A MODELS_DIR/../work/<model>/ folder, if any,
# holds that model's calibration and flagged prompts, and bench/repair.py repairs that model.
# DEVICE, BATCHES, REPEATS, DTYPES, SEEDS (the repair's, comma-separated) and COST_MODELS (the folder
# names to time, or none; default every one) override the defaults (a CPU dry run: DEVICE=cpu BATCHES=1 REPEATS=1).
set -uo pipefail
models=$1 out=$2
device=${DEVICE:-cuda} batches=${BATCHES:-1 8 64} repeats=${REPEATS:-20} dtypes=${DTYPES:-float16 bfloat16} seeds=${SEEDS:-0}
export PYTHONPATH=$PWD/service PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$out/card.txt"

for dir in "$models"/*/; do
    dir=${dir%/}
    case " ${COST_MODELS:-$(basename "$dir")} " in *" $(basename "$dir") "*) ;; *) continue ;; esac
    weights=()
    compgen -G "$dir/*.safetensors" >/dev/null || weights=(--random-weights)  # one file or shards
    for dtype in $dtypes; do
        # shellcheck disable=SC2086  # batches is a list
        python3 bench/detect_cost.py "$dir" "${weights[@]}" --device "$device" --dtype "$dtype" \
            --batch $batches --tokens 64 512 --repeats "$repeats" 2>>"$out/cost.log" | tee -a "$out/cost.jsonl" \
            || echo "detect_cost failed on $dir $dtype: see cost.log"
    done
done

if [ -d "$models/../work" ]; then
    mkdir -p /tmp/headguard-bench-repair
    cp -r "$models/../work/." /tmp/headguard-bench-repair/
    for work in "$models"/../work/*/; do
        name=$(basename "$work")
        python3 bench/repair.py "$models/$name" --device "$device" --seeds "$seeds" --results "$out" 2>>"$out/repair.log" \
            || echo "repair failed on $name: see repair.log"
    done
fi
