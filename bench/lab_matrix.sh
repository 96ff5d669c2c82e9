#!/usr/bin/env bash
# Builds the lab matrix behind docs/BENCHMARKS.md; each build measures CA and ASR (its lab.json).
# Usage: bench/lab_matrix.sh [BASES] [DATASETS] [ATTACKS]   (space-separated lists in quotes)
# Models are cached under $HEADGUARD_CACHE/lab; reports land in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
BASES=${1:-"minilm smollm2"}
DATASETS=${2:-"movies sms"}
ATTACKS=${3:-"clean badnets addsent composite synonym"}
HG=.venv/bin/headguard
CACHE=${HEADGUARD_CACHE:-$HOME/.cache/headguard}
mkdir -p bench/results
for base in $BASES; do
  for dataset in $DATASETS; do
    for attack in $ATTACKS; do
      name="$base-$dataset-$attack-s0"
      model="$CACHE/lab/$name"
      echo "== $name"
      $HG lab build --base "$base" --dataset "$dataset" --attack "$attack" --seed 0 --out "$model" --reuse \
        2>"bench/results/$name.build.log"
      cp "$model/lab.json" "bench/results/$name.lab.json"
    done
  done
done
