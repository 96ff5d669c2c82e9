#!/usr/bin/env bash
# Evaluates defenses side by side on built lab models; reports land in bench/results/.
# Usage: bench/defenses.sh "MODELS" ["DEFENSES"]   e.g. bench/defenses.sh "minilm-movies-badnets-s0" "headguard strip onion"
# Sizes per defense (held-out inputs per group / calibration prompts) keep ONION, which costs one
# language-model pass per word of every input, within minutes on a CPU. A clean control model has
# no triggered group and its false-positive rate is the measurement, so it gets the whole test split.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=$1
DEFENSES=${2:-"headguard strip onion"}
CACHE=${HEADGUARD_CACHE:-$HOME/.cache/headguard}
declare -A LIMIT=([headguard]=200 [strip]=100 [onion]=15)
declare -A CALIBRATION=([headguard]=400 [strip]=200 [onion]=30)
mkdir -p bench/results docs/img
for name in $MODELS; do
  for defense in $DEFENSES; do
    echo "== $name / $defense"
    limit=${LIMIT[$defense]}
    [[ $name == *-clean-* ]] && limit=$(wc -l < "$CACHE/lab/$name/splits/test.jsonl")
    .venv/bin/headguard lab eval --model "$CACHE/lab/$name" --defense "$defense" --limit "$limit" \
      --calibration-size "${CALIBRATION[$defense]}" --json "bench/results/$name.eval-$defense.json" \
      --plot "docs/img/scores-$name-$defense.png" 2>"bench/results/$name.eval-$defense.log"
  done
done
