#!/usr/bin/env bash
# Goldens for refactors that must not change any output (issue #20, "the house").
#
#   scripts/goldens.sh capture DIR   run every command below into DIR (from the current build)
#   scripts/goldens.sh compare DIR   run them again into a temporary folder and diff against DIR
#
# Commands: simulate, dynamics, verify --trials 2 (JSON and stdout), a small sweep, the same
# sweep as --shard 0/2 + 1/2 then merge, check, default-config, --help of every subcommand,
# the synthetic examples' CSVs, and with the `lm` feature: lm-tiny, lm (head-only and full) and
# lm-recipe --epochs 1 on the tiny checkpoints (for `lm`, a set with the single-token answer
# words), and ham-cycle on a 5-vertex config. Wall-clock fields (`seconds_per_step`, `timing`,
# `tokens_per_second`, JSON keys and CSV columns whose name ends in `seconds`) and timing lines
# of stdout are stripped.
# Builds with `cargo build --release --features lm --bins --examples` (set NO_LM=1 to leave
# the lm commands out). Exits 1 when compare finds a difference.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/goldens.sh capture|compare DIR}
golden=${2:?usage: scripts/goldens.sh capture|compare DIR}
features=(--features lm)
if [ "${NO_LM:-0}" = 1 ]; then features=(); fi
cargo build --release "${features[@]}" --bins --examples >&2
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/rmflow
case $mode in
capture) out=$golden; rm -rf "$out"; mkdir -p "$out" ;;
compare) out=$(mktemp -d) ;;
*) echo "usage: scripts/goldens.sh capture|compare DIR" >&2; exit 2 ;;
esac
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"; [ "$mode" = compare ] && rm -rf "$out"' EXIT
export RAYON_NUM_THREADS=2

# Run from $work so that every path printed is relative and the same in both runs.
cd "$work"
cp -r "$root/experiments" experiments
run() { # name, args...: stdout to $out/NAME.stdout, exit code to $out/NAME.rc
  local name=$1; shift
  set +e
  "$bin" "$@" > "$out/$name.stdout" 2> "$work/stderr"
  echo $? > "$out/$name.rc"
  set -e
  # stderr: progress and timings; kept only when the command failed.
  if [ "$(cat "$out/$name.rc")" != 0 ]; then cp "$work/stderr" "$out/$name.stderr"; fi
}
echo "[goldens] synthetic commands" >&2
run simulate simulate --out runs/simulate
run dynamics dynamics --out runs/dynamics --t-max 1e4
run verify verify --trials 2 --json runs/verify.json
cat > sweep.toml <<'EOF'
[sweep]
parameter = "eval_overlap"
values = [0.0, 0.5, 1.0]
seeds = 3
[base]
seed = 0
[base.setup]
dim = 16
filler_tokens = 96
train_pairs = 40
eval_pairs = 20
response_length = 2
[base.train]
optimizer = "flow"
t_max = 1e3
observations_per_decade = 1
EOF
run sweep sweep --config sweep.toml --out runs/sweep
run shard0 sweep --config sweep.toml --out runs/shards --shard 0/2
run shard1 sweep --config sweep.toml --out runs/shards --shard 1/2
run merge sweep merge --out runs/merged runs/shards
run check check
run check-overlap check --config experiments/overlap_sweep.toml
run default-config default-config
run help --help
for c in simulate verify dynamics sweep lm lm-recipe lm-convert lm-import-gguf lm-tiny lm-forward ham-cycle check default-config; do
  run "help-$c" "$c" --help
done
run help-sweep-merge sweep merge --help

echo "[goldens] examples (CSVs)" >&2
mkdir -p ex && (cd ex && mkdir -p figures && ln -s "$root/experiments" experiments)
for e in ablations domain_vs_token_shift max_margin_convergence optimizers overlap_sweep \
         rho_heatmap semantic_sweep theorem2_accuracy unseen_margins verification_without_generation; do
  echo "[goldens]   $e" >&2
  (cd ex && "$target/release/examples/$e" > /dev/null 2>&1) || echo "example $e failed" >> "$out/examples.failures"
done
mkdir -p "$out/examples" && cp ex/figures/*.csv ex/figures/*.svg "$out/examples/"

if [ "${NO_LM:-0}" != 1 ]; then
  echo "[goldens] lm commands on tiny checkpoints" >&2
  run lm-tiny lm-tiny --out runs/tiny --recipe experiments/persona_own_statements.toml
  # The single-token experiment's answer words (experiments/persona.toml) in the vocabulary.
  sed 's/^eval_rejected_words = \["not really", "nope"\]/eval_rejected_words = ["not really", "nope", "hardly"]/' \
    experiments/persona_own_statements.toml > persona-words.toml
  run lm-tiny-persona lm-tiny --out runs/tiny-persona --recipe persona-words.toml
  run lm-head lm --model runs/tiny-persona/llama-gqa --config experiments/persona.toml --out runs/lm-head
  run lm-full lm --model runs/tiny-persona/gpt2 --config experiments/persona.toml --out runs/lm-full --mode full
  run lm-recipe-llama lm-recipe --model runs/tiny/llama-tied --config experiments/persona_own_statements.toml --out runs/recipe-llama --epochs 1
  run lm-recipe-bert lm-recipe --model runs/tiny/bert --config experiments/persona_own_statements.toml --out runs/recipe-bert --epochs 1 --mode both
  run lm-forward lm-forward --model runs/tiny/qwen2 --out runs/forward.json
  cat > cycle.toml <<'EOF2'
seed = 3
[data]
vertices = 5
edge_probability = 0.2
train_pairs = 16
test_pairs = 6
seed = 517
[model]
dim = 16
layers = 2
heads = 2
[pretrain]
steps = 4
batch = 8
lr = 0.001
graphs = 32
warmup_steps = 200
clip_norm = 1.0
walk_fraction = 0.0
[train]
beta = 0.01
lr = 0.001
epochs = 2
pairs_per_step = 8
micro_batch = 4
head_init_std = 0.02
eval_every_epochs = 1
eval_batch = 64
[eval]
extra_new_tokens = 8
exact_batch = 2048
prompts = 0
EOF2
  run ham-cycle ham-cycle --config cycle.toml --out runs/ham-cycle
fi

# Normalise: drop wall-clock keys from JSON, timing from stdout; copy the runs.
cp -r runs "$out/runs"
python3 - "$out" <<'PY'
import json, os, re, sys
WALL = {"seconds", "step_seconds", "seconds_per_step", "timing", "tokens_per_second",
        "elapsed_seconds", "peak_rss_bytes"}
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in WALL and not k.endswith("seconds")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(d, f)
        if f.endswith(".json"):
            try:
                v = json.load(open(p))
            except ValueError:
                continue
            json.dump(strip(v), open(p, "w"), indent=1, sort_keys=True)
        elif f.endswith(".csv"):
            rows = open(p).read().split("\n")
            head = rows[0].split(",")
            keep = [i for i, h in enumerate(head) if not h.endswith("seconds")]
            if len(keep) < len(head):
                cut = lambda r: ",".join(c for i, c in enumerate(r.split(",")) if i in keep) if r else r
                open(p, "w").write("\n".join(cut(r) for r in rows))
        elif f.endswith(".stdout"):
            t = open(p).read()
            t = re.sub(r"\b\d+(\.\d+)? ?(s|ms|tok/s|tokens/s)\b", "<t>", t)
            t = re.sub(r"memory available: [0-9.]+ [KMGT]?i?B", "memory available: <mem>", t)
            open(p, "w").write(t)
PY
if [ "$mode" = compare ]; then
  if diff -r "$golden" "$out" > "$work/diff"; then
    echo "[goldens] identical to $golden"
  else
    diff -rq "$golden" "$out" | sed 's/^/[goldens] /' || true
    head -100 "$work/diff"; echo "[goldens] DIFFERENT from $golden ($(wc -l < "$work/diff") diff lines)"; exit 1
  fi
else
  echo "[goldens] captured into $golden ($(find "$golden" -type f | wc -l) files)"
fi
