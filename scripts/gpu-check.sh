#!/usr/bin/env bash
# The GPU check of the real-model mode, prepared to run in one call on a GPU machine that has
# PyTorch and transformers but no Rust (README, "GPU"). Carry (≤ 64 MiB): this repository,
# dist/rmflow-cuda-sm90.tar.xz (scripts/build-cuda.sh; 7.5 MB) and models/all-MiniLM-L6-v2-f16
# (`rmflow lm-convert`; 43 MiB). Writes everything to $OUT (default out/gpu-check):
#
#   forward-<model>-<device>.json   rmflow's final hidden states of the probe sentences on the
#                                   tiny checkpoints of every family (rmflow lm-tiny), CUDA and CPU
#   reference-<device>.json         the same through transformers (scripts/reference_forward.py)
#   persona-<device>/               `rmflow lm --mode full` on experiments/persona.toml
#   report.json                     versions, GPU, timings and every agreement figure
#
# Usage: OUT=/some/dir scripts/gpu-check.sh [ARTEFACT.tar.xz] [MODEL_DIR]
# Untested on a GPU so far (no GPU was lent to the sessions that wrote it); the CPU halves run
# anywhere the CUDA binary loads (with the libcuda stub of scripts/build-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
artefact=${1:-dist/rmflow-cuda-sm90.tar.xz}
model=${2:-models/all-MiniLM-L6-v2-f16}
out=${OUT:-out/gpu-check}
devices=${GPU_CHECK_DEVICES:-cuda cpu}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xJf "$artefact" -C "$work"
run=$(ls "$work"/rmflow-cuda-sm*/run.sh)
log() { echo "gpu-check: $*" >&2; }

log "tiny checkpoints and forwards"
"$run" lm-tiny --out "$work/tiny" >/dev/null
tiny=(bert llama-gqa llama-tied gpt2)
for dev in $devices; do
    pairs=()
    for m in "${tiny[@]}"; do
        "$run" lm-forward --model "$work/tiny/$m" --device "$dev" --out "$out/forward-$m-$dev.json" --force >/dev/null
        pairs+=("$work/tiny/$m" "$out/forward-$m-$dev.json")
    done
    tdev=$dev
    python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || tdev=cpu
    python3 scripts/reference_forward.py "${pairs[@]}" --device "$tdev" > "$out/reference-$dev.json" ||
        log "transformers comparison failed on $dev (see above)"
done

for dev in $devices; do
    log "persona.toml, --mode full, --device $dev"
    start=$(date +%s.%N)
    "$run" lm --model "$model" --config experiments/persona.toml --out "$out/persona-$dev" \
        --mode full --device "$dev" --force > "$out/persona-$dev.log" 2>&1 || log "persona on $dev failed: $(tail -2 "$out/persona-$dev.log")"
    echo "$start $(date +%s.%N)" > "$out/persona-$dev.time"
done

python3 - "$out" "$devices" <<'PY'
import json, os, subprocess, sys
out, devices = sys.argv[1], sys.argv[2].split()
report = {"devices": devices}
try:
    report["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True).stdout.strip()
except OSError:
    report["gpu"] = None
try:
    import torch, transformers
    report["torch"], report["transformers"] = torch.__version__, transformers.__version__
except ImportError:
    pass
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
report["reference"] = {d: load(os.path.join(out, f"reference-{d}.json")) for d in devices}
# rmflow CUDA vs CPU on the tiny checkpoints.
tiny = {}
for m in ["bert", "llama-gqa", "llama-tied", "gpt2"]:
    recs = {d: load(os.path.join(out, f"forward-{m}-{d}.json")) for d in devices}
    if all(recs.values()) and len(devices) == 2:
        a, b = (recs[d]["hidden"] for d in devices)
        tiny[m] = {k: max(abs(x - y) for ra, rb in zip(a[k], b[k]) for x, y in zip(ra, rb)) for k in a}
report["tiny_cuda_vs_cpu_max_abs_diff"] = tiny
persona = {}
for d in devices:
    lm = load(os.path.join(out, f"persona-{d}", "lm.json"))
    summ = load(os.path.join(out, f"persona-{d}", "summary.json"))
    t = open(os.path.join(out, f"persona-{d}.time")).read().split()
    entry = {"wall_seconds": float(t[1]) - float(t[0]), "lm_seconds": lm and lm.get("seconds"),
             "tokens_encoded": lm and lm.get("tokens_encoded")}
    if summ:
        entry["head_only"] = {m: {s["split"]: s["tie_aware_accuracy"] for s in summ[m]["final"]["splits"]}
                              for m in ("exrm", "imrm")}
        entry["head_only_unseen_row_drift"] = summ["imrm"]["final"].get("unseen_row_drift")
    full = {}
    for m in ("exrm", "imrm"):
        s = load(os.path.join(out, f"persona-{d}", "full", m, "summary.json"))
        if s:
            full[m] = {"final_loss": s.get("final_loss"), "unseen_row_drift": s.get("unseen_row_drift"),
                       "splits": {x["split"]: x.get("tie_aware_accuracy") for x in s.get("splits", [])}}
    entry["full"] = full
    persona[d] = entry
report["persona"] = persona
if len(devices) == 2 and all(persona[d].get("head_only") for d in devices):
    a, b = (persona[d] for d in devices)
    report["agreement"] = {
        "head_only_accuracies_identical": a["head_only"] == b["head_only"],
        "full_accuracies_identical": {m: a["full"].get(m, {}).get("splits") == b["full"].get(m, {}).get("splits") for m in ("exrm", "imrm")},
        "full_final_loss_abs_diff": {m: abs(a["full"][m]["final_loss"] - b["full"][m]["final_loss"])
                                     for m in ("exrm", "imrm") if m in a["full"] and m in b["full"]},
        "imrm_unseen_row_drift": {d: persona[d]["full"].get("imrm", {}).get("unseen_row_drift") for d in devices},
    }
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps(report.get("agreement", {}), indent=1))
PY
log "wrote $out/report.json"
