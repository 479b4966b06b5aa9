#!/usr/bin/env python3
"""Which pairs a `rmflow ham-cycle` reward model gets wrong: accuracy (ties 1/2) and mean margin
by how many of the rejected order's n steps (the closing step included) are edges of the graph,
per reward model, evaluation and split. A rejected order with n such steps would be a cycle, so
the count says how near to a cycle the rejected response is; a reward that only counts valid
steps, rather than checking them all, errs on the near ones.

Reads the run's `pairs.jsonl` (the prompt's edge list and the rejected order, in the official
text format) and its `pair_rewards.csv` (or the rows so far: `rmflow lm-progress RUN --pairs`).
Standard library only. Writes CSV on stdout:
`reward,epoch,split,rejected_edges,pairs,accuracy,mean_margin,mean_chosen_reward,
mean_rejected_reward,chosen_above_zero` (the last: the fraction of pairs whose chosen reward is
positive; for the IM-RM, `r = β ln π/π_ref`, the fraction of correct cycles that the policy makes
more likely than `π_ref` does). `--bins 0-99` puts every pair of a split in one group.

    python3 scripts/ham_cycle_pair_errors.py RUN_DIR [--rewards FILE] [--epoch N] [--bins 0-3,4-5,6-10]
"""

import argparse
import csv
import json
import os
import sys
from collections import defaultdict


def edges_of(prompt):
    """The graph's edges from the official prompt text (`Edges: <sep>a<edge_sep>b<sep>...`)."""
    try:
        listed = prompt.split("Edges: ", 1)[1]
    except IndexError:
        raise SystemExit(f"a prompt without 'Edges: ': {prompt[:80]!r}")
    out = set()
    for item in filter(None, listed.split("<sep>")):
        a, b = item.split("<edge_sep>")
        out.add(frozenset((int(a), int(b))))
    return out


def rejected_edges(pair):
    """How many of the rejected order's steps (cyclically) are edges of the pair's graph."""
    edges = edges_of(pair["prompt"])
    order = [int(v) for v in pair["rejected"].split("<sep>")]
    n = len(order)
    return sum(frozenset((order[i], order[(i + 1) % n])) in edges for i in range(n))


def bin_of(bins, k):
    for lo, hi in bins:
        if lo <= k <= hi:
            return f"{lo}-{hi}" if lo != hi else str(lo)
    return str(k)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the ham-cycle --out folder (its pairs.jsonl)")
    ap.add_argument("--rewards", help="pair_rewards.csv (default: RUN/pair_rewards.csv)")
    ap.add_argument("--epoch", type=int, help="one evaluation only (default: every one)")
    ap.add_argument("--bins", default="", help="group counts, e.g. 0-3,4-5,6-10 (default: each count)")
    a = ap.parse_args()
    bins = [tuple(int(x) for x in (b.split("-") * 2)[:2]) for b in a.bins.split(",") if b]
    with open(os.path.join(a.run, "pairs.jsonl")) as f:
        hits = {}
        for line in f:
            p = json.loads(line)
            hits[(p["split"], int(p["index"]))] = rejected_edges(p)
    groups = defaultdict(list)
    with open(a.rewards or os.path.join(a.run, "pair_rewards.csv")) as f:
        for row in csv.DictReader(f):
            epoch = int(row["epoch"])
            if a.epoch is not None and epoch != a.epoch:
                continue
            key = (row["split"], int(row["pair"]))
            if key not in hits:
                raise SystemExit(f"pair_rewards.csv: {key} is not in pairs.jsonl")
            rewards = (float(row["chosen_reward"]), float(row["rejected_reward"]))
            groups[(row["reward"], epoch, row["split"], bin_of(bins, hits[key]))].append(rewards)
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["reward", "epoch", "split", "rejected_edges", "pairs", "accuracy", "mean_margin",
                "mean_chosen_reward", "mean_rejected_reward", "chosen_above_zero"])
    order = {"imrm": 0, "exrm": 1}
    lower = lambda s: int(s.split("-")[0])
    for key in sorted(groups, key=lambda k: (order.get(k[0], 2), k[1], k[2] != "train", lower(k[3]))):
        pairs = groups[key]
        m = [c - r for c, r in pairs]
        mean = lambda v: f"{sum(v) / len(v):.6g}"
        acc = sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in m) / len(m)
        above = sum(c > 0 for c, _ in pairs) / len(pairs)
        w.writerow([*key, len(m), f"{acc:.4f}", mean(m), mean([c for c, _ in pairs]),
                    mean([r for _, r in pairs]), f"{above:.4f}"])


if __name__ == "__main__":
    main()
