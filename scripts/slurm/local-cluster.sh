#!/usr/bin/env bash
# Tests rmflow's Slurm path against a real Slurm on this one machine: starts munged, slurmctld and
# slurmd as a one-node cluster (config, keys, state and logs in a temporary folder; ports on
# 127.0.0.1), submits a sweep as a job array of N tasks plus a dependent merge job, waits, checks
# that the merged sweep.csv is byte-identical to an unsharded local run, and stops everything it
# started (also on failure).
#
# Usage: scripts/slurm/local-cluster.sh [SWEEP_FILE] [N]
#   default: experiments/overlap_sweep.toml, 4 tasks.
# Needs root (Debian's slurm-wlm and munge are installed with apt-get if missing) and a release
# build (cargo build --release is run if target/release/rmflow is missing).
# Environment: RMFLOW (binary), KEEP_TMP=1 (keep the temporary folder for inspection).
set -euo pipefail
cd "$(dirname "$0")/../.."
sweep_file=${1:-experiments/overlap_sweep.toml}
tasks=${2:-4}
rmflow=${RMFLOW:-$PWD/target/release/rmflow}

log() { echo "[local-cluster] $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi
if [ ! -x "$rmflow" ]; then
    log "building rmflow (release)"
    cargo build --release -q
fi

tmp=$(mktemp -d /tmp/rmflow-slurm.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
    local rc=$?
    if [ -f "$tmp/slurm.conf" ]; then
        SLURM_CONF="$tmp/slurm.conf" scancel --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # munged writes its seed file while it shuts down (stop 48: `rm -rf` raced it and failed CI
    # after every check had passed), so wait for it to be gone before removing its folder.
    if [ -f "$tmp/munged.pid" ]; then
        local mp
        mp=$(cat "$tmp/munged.pid")
        kill "$mp" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ "$rc" -ne 0 ]; then
        log "FAILED (exit $rc); daemon logs:"
        tail -n 20 "$tmp"/*.log >&2 2>/dev/null || true
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $tmp"
    elif ! rm -rf "$tmp" 2>/dev/null && ! { sleep 1 && rm -rf "$tmp"; }; then
        log "could not remove $tmp (left behind; the test's result stands)"
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

# munge: a fresh key and a private socket.
mkdir -p "$tmp/munge"
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$tmp/munge"
chmod 400 "$tmp/munge/munge.key"
munged --force --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/munge.socket" \
    --pid-file="$tmp/munged.pid" --log-file="$tmp/munged.log" --seed-file="$tmp/munge/seed"
for _ in $(seq 50); do [ -S "$tmp/munge/munge.socket" ] && break; sleep 0.1; done

host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$tmp/state" "$tmp/spool"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=rmflowtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$tmp/slurm.conf"

slurmctld -D -i -f "$SLURM_CONF" >"$tmp/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$tmp/slurmd.out" 2>&1 &
pids+=($!)
log "waiting for the node"
for _ in $(seq 120); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then break; fi
    sleep 0.5
done
sinfo -h -o '%T' | grep -qE '^(idle|mixed|allocated)' || { log "node did not come up"; sinfo >&2 || true; exit 1; }
log "cluster up: $(sinfo -h -o '%N %c CPUs %T')"

work="$tmp/work"
mkdir -p "$work"
start=$(date +%s)
jid=$(sbatch --parsable --array=0-$((tasks - 1)) --cpus-per-task=1 \
    --output="$work/task-%a.out" --chdir="$PWD" \
    scripts/slurm/sweep.sbatch "$sweep_file" "$work/shards" "$rmflow")
merge=$(sbatch --parsable --dependency=afterok:"$jid" --output="$work/merge.out" --chdir="$PWD" \
    --wrap "'$rmflow' sweep merge '$work/shards' --out '$work/merged'")
log "submitted array job $jid ($tasks tasks) and merge job $merge"
for _ in $(seq 1800); do
    if [ -z "$(squeue -h -j "$jid,$merge" 2>/dev/null)" ]; then break; fi
    sleep 1
done
[ -z "$(squeue -h -j "$jid,$merge" 2>/dev/null)" ] || { log "jobs still queued after 30 min"; exit 1; }
cluster_s=$(($(date +%s) - start))
[ -f "$work/merged/sweep.csv" ] || { log "merge produced no sweep.csv"; cat "$work"/*.out >&2; exit 1; }
log "cluster run: $cluster_s s; shards: $(ls "$work/shards" | tr '\n' ' ')"

start=$(date +%s)
"$rmflow" sweep --config "$sweep_file" --out "$work/local" >/dev/null 2>"$work/local.err"
log "local run: $(($(date +%s) - start)) s"
if cmp "$work/local/sweep.csv" "$work/merged/sweep.csv"; then
    log "PASS: merged sweep.csv from $tasks Slurm array tasks is byte-identical to the local run"
else
    log "FAIL: merged sweep.csv differs from the local run"
    diff "$work/local/sweep.csv" "$work/merged/sweep.csv" >&2 || true
    exit 1
fi
