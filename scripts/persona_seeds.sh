#!/usr/bin/env bash
# The persona recipe on Anthropic's data (experiments/persona_paper.toml) with other seeds: each
# seed S sets both `seed` (the EX-RM head's init and the pairs' order) and `data.split_seed`
# (the 80 / 40 draw of the prompts and the training responses), full fine-tuning, both reward
# models, EPOCHS epochs evaluated every EVAL epochs.
#   scripts/persona_seeds.sh BINARY MODEL_DIR OUT_ROOT "1 2 3" [EPOCHS=10] [EVAL=2]
# Writes OUT_ROOT/seed-S/ (the recipe's outputs; its recipe.json holds the exact config) and
# OUT_ROOT/seed-S.toml. A run that stops resumes with `BINARY lm-recipe --resume OUT_ROOT/seed-S`.
set -euo pipefail
bin=$1 model=$2 root=$3 seeds=$4 epochs=${5:-10} eval=${6:-2}
mkdir -p "$root"
for s in $seeds; do
  cfg="$root/seed-$s.toml"
  sed -e "s/^seed = 875$/seed = $s/" -e "s/^split_seed = 875 /split_seed = $s /" \
    experiments/persona_paper.toml > "$cfg"
  grep -q "^seed = $s$" "$cfg" && grep -q "^split_seed = $s " "$cfg" \
    || { echo "persona_seeds.sh: could not set the seeds in $cfg" >&2; exit 2; }
  if [ -d "$root/seed-$s" ]; then echo "seed $s: $root/seed-$s exists, skipped" >&2; continue; fi
  if [ -d "$root/seed-$s.checkpoint" ]; then
    "$bin" lm-recipe --resume "$root/seed-$s"
  else
    "$bin" lm-recipe --model "$model" --config "$cfg" --out "$root/seed-$s" \
      --epochs "$epochs" --eval-every "$eval" --reward exrm,imrm
  fi
done
