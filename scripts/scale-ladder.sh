#!/usr/bin/env bash
# Size ladder of `rmflow simulate` (seen-row IM-RM, K = 1): wall time and peak RSS per size.
# Usage: scripts/scale-ladder.sh [RMFLOW_BINARY]   (default: builds target/release/rmflow)
# Prints one Markdown table row per size; needs GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin=target/release/rmflow
fi
[[ -x /usr/bin/time ]] || { echo "scale-ladder: needs GNU time at /usr/bin/time" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| V | D | N | t_max | observations / decade | wall | peak RSS |"
echo "|---|---|---|---|---|---|---|"
# V D N t_max [observations_per_decade dense_output] (defaults: 4, false)
while read -r v d n t obs dense; do
    cfg="$work/c.toml"
    cat > "$cfg" <<CFG
seed = 0
[setup]
dim = $d
filler_tokens = $((v - 32))
train_pairs = $n
[train]
t_max = $t
imrm_gradient = "sparse"
observations_per_decade = ${obs:-4}
dense_output = ${dense:-false}
[eval]
single_response_rewards = false
CFG
    label=${obs:-4}
    [[ "${dense:-false}" == true ]] && label+=", dense output"
    rm -rf "$work/out"
    if /usr/bin/time -f "%e %M" -o "$work/time" "$bin" simulate --config "$cfg" --out "$work/out" >/dev/null 2>"$work/err"; then
        read -r wall kib < "$work/time"
        printf '| %s | %s | %s | %s | %s | %.2f s | %.0f MiB |\n' "$v" "$d" "$n" "$t" "$label" "$wall" "$((kib / 1024))"
    else
        echo "| $v | $d | $n | $t | $label | failed: $(tail -1 "$work/err") | |"
    fi
done <<SIZES
1024 32 200 1e8
1024 32 200 1e100
1024 32 2000 1e8
1024 32 5000 1e4
1024 1024 200 1e8
1024 4096 200 1e8
32768 256 200 1e8
131072 256 200 1e8
131072 1024 200 1e8
1048576 4096 200 1e8
131072 4096 10000 1e100 4 false
131072 4096 10000 1e100 1 true
SIZES
