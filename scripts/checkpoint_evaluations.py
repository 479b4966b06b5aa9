#!/usr/bin/env python3
"""Prints, as CSV, the evaluations held by a run's newest checkpoint (OUT.checkpoint/): every
finished reward model's and the one in training, one row per (reward model, evaluation, split),
with the split metrics the checkpoint stores (the columns of metrics.csv less `pairs`). For reading a long run before it ends.

    python3 -m venv /tmp/cb && /tmp/cb/bin/pip install cbor2
    /tmp/cb/bin/python scripts/checkpoint_evaluations.py runs/persona50 > evaluations.csv
    /tmp/cb/bin/python scripts/checkpoint_evaluations.py runs/persona50 --alignment > alignment.csv

`--alignment`: instead, the EX-RM's footnote-3 statistics (the columns of alignment.csv).

A `ham-cycle` run's checkpoint: the rows of its metrics.csv so far (verification accuracy, δ,
generation, the exact masses), from what its observer measured at every evaluation.

    /tmp/cb/bin/python scripts/checkpoint_evaluations.py runs/ham_cycle_smollm2 > metrics_so_far.csv
"""
import csv
import sys
from pathlib import Path

import cbor2

out = Path(sys.argv[1])
ckpt = Path(f"{out}.checkpoint")
name = (ckpt / "LATEST").read_text().strip()
state = cbor2.load(open(ckpt / name / "progress.cbor", "rb"))
runs = [(f["mode"], f["reward"], f["evaluations"], "finished") for f in state["finished"]]
plan = __import__("json").load(open(ckpt / "run.json"))
if "modes" not in plan:  # ham-cycle: its observer's records, as metrics.csv has them
    observed = cbor2.loads(bytes(state.get("observed") or b"\xa0"))
    rows = observed.get("epochs", [])
    w = csv.writer(sys.stdout)
    if rows:
        w.writerow(rows[0].keys())
        w.writerows(["" if v is None else v for v in r.values()] for r in rows)
    print(f"# {ckpt / name}", file=sys.stderr)
    sys.exit(0)
done = len(runs)
if state.get("current"):
    modes, rewards = plan["modes"], plan["rewards"]
    order = [(m, r) for m in modes for r in rewards]
    mode, reward = order[done]
    runs.append((mode, reward, state["current"]["evaluations"], "in training"))
if "--alignment" in sys.argv[2:]:
    stats = ["count", "mean", "min", "first_quartile", "median", "third_quartile", "max", "fraction_positive"]
    w = csv.writer(sys.stdout)
    w.writerow(["mode", "model", "status", "epoch", "step", "split", "train_pairs", "split_pairs", "statistic"] + stats)
    for mode, reward, evaluations, status in runs:
        for e in evaluations:
            for a in e.get("representation_alignment", []):
                for stat in ["inner_products", "cosines", "max_margin_cosines"]:
                    st = a.get(stat)
                    if st:
                        w.writerow([mode, reward, status, e["epoch"], e["step"], a["unseen_split"], a["train_pairs"],
                                    a["unseen_pairs"], stat] + [st.get(c, "") for c in stats])
    print(f"# {ckpt / name}", file=sys.stderr)
    sys.exit(0)
cols = ["exact_tie_accuracy", "tie_aware_accuracy", "strict_accuracy", "ties", "mean_margin",
        "min_margin", "max_abs_margin"]
rcols = ["normalised_abs_margin", "mean_chosen_reward", "mean_rejected_reward"]
w = csv.writer(sys.stdout)
w.writerow(["mode", "model", "status", "epoch", "step", "split"] + cols + rcols)
for mode, reward, evaluations, status in runs:
    for e in evaluations:
        for s in e["splits"]:
            a, r = s["accuracy"], s["rewards"]
            w.writerow([mode, reward, status, e["epoch"], e["step"], a["split"]]
                       + [a.get(c, "") for c in cols] + [r.get(c, "") for c in rcols])
print(f"# {ckpt / name}", file=sys.stderr)
