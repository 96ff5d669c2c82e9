#!/usr/bin/env bash
# Evaluates defenses side by side on built lab models: bench/defenses.sh "MODELS" "DEFENSES" [LIMIT]
# MODELS are lab model names (e.g. minilm-movies-badnets-s0); reports land in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=$1
DEFENSES=${2:-"headguard strip onion"}
LIMIT=${3:-200}
CACHE=${HEADGUARD_CACHE:-$HOME/.cache/headguard}
mkdir -p bench/results docs/img
for name in $MODELS; do
  for defense in $DEFENSES; do
    echo "== $name / $defense"
    .venv/bin/headguard lab eval --model "$CACHE/lab/$name" --defense "$defense" --limit "$LIMIT" \
      --json "bench/results/$name.eval-$defense.json" --plot "docs/img/scores-$name-$defense.png" 2>/dev/null
  done
done
