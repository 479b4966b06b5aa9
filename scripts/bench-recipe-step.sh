#!/usr/bin/env bash
# Cost of one full fine-tuning Adam step of 32 pairs: the paper recipe's prefix + word pairs
# (`lm-recipe`, experiments/persona_paper.toml) against the single-token `[MASK]`/last-position
# pairs of `lm --mode full` (experiments/persona.toml), on the same model and machine.
# Usage: scripts/bench-recipe-step.sh MODEL_DIR [STEPS] [RMFLOW_BINARY]
# Prints seconds per step (optimizer steps only: forward, backward, update; no evaluation) and
# the ratio, per reward model. Needs a `--features lm` build.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/bench-recipe-step.sh MODEL_DIR [STEPS] [RMFLOW_BINARY]}
steps=${2:-3}
bin=${3:-target/release/rmflow}
if [ ! -x "$bin" ]; then cargo build --release --features lm; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Single-token: `steps` AdamW steps of 32 pairs, evaluation only at the end.
sed -e "s/^steps = .*/steps = $steps/" -e 's/^batch_pairs = .*/batch_pairs = 32/' \
    -e 's/^eval_every = .*/eval_every = 0/' -e 's/^eval_at = .*/eval_at = []/' \
    experiments/persona.toml > "$work/single.toml"
# Recipe: one epoch is ⌈80/32⌉ = 3 steps of at most 32 pairs; `steps` rounds up to whole epochs.
epochs=$(( (steps + 2) / 3 ))
"$bin" lm --model "$model" --config "$work/single.toml" --out "$work/single" --mode full >/dev/null 2>&1
"$bin" lm-recipe --model "$model" --config experiments/persona_paper.toml --out "$work/recipe" \
    --mode full --epochs "$epochs" >/dev/null 2>&1
python3 - "$work" "$model" <<'PY'
import json, sys
work, model = sys.argv[1], sys.argv[2]
recipe = {r["model"]: r for r in json.load(open(f"{work}/recipe/recipe.json"))["runs"]}
print(f"model: {model}")
print(f"{'reward':<6} {'single-token s/step':>20} {'recipe s/step':>14} {'ratio':>7}  recipe steps")
for m in ("exrm", "imrm"):
    single = json.load(open(f"{work}/single/full/{m}/summary.json"))["seconds_per_step"]
    r = recipe[m]
    print(f"{m:<6} {single:>20.4f} {r['seconds_per_step']:>14.4f} {r['seconds_per_step'] / single:>7.2f}  {r['steps']}")
PY
