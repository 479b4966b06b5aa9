#!/usr/bin/env python3
"""How a `rmflow ham-cycle` reward model's margins grow and whether they carry to unseen pairs:
per reward model and evaluation, for the training and the test pairs, the accuracy (ties 1/2),
the mean margin `r(x, y+) - r(x, y-)`, its standard deviation over the pairs, their ratio
(mean / sd: how far the margins stand out from their spread, whatever the reward's scale), and
`transfer`: the test pairs' mean margin over the training pairs' (1 where what the training
raised on its own pairs is raised as much on unseen ones).

Reads the run's `pair_rewards.csv` (or the rows so far: `rmflow lm-progress RUN --pairs`).
Standard library only. Writes CSV on stdout:
`reward,epoch,step,split,pairs,accuracy,mean_margin,sd_margin,mean_over_sd,transfer`
(`transfer` on the test rows; empty where the training margin is 0).

    python3 scripts/ham_cycle_margins.py RUN_DIR [--rewards FILE]
"""

import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict


def margins(path):
    """(reward, epoch, step) -> split -> the margins of its pairs, in file order."""
    out = defaultdict(lambda: defaultdict(list))
    try:
        f = open(path, newline="")
    except OSError as e:
        raise SystemExit(f"{path}: cannot read: {e.strerror}")
    with f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                m = float(row["chosen_reward"]) - float(row["rejected_reward"])
                key = (row["reward"], int(row["epoch"]), int(row["step"]))
            except (KeyError, TypeError, ValueError) as e:
                raise SystemExit(f"{path}: line {line}: {e!r}")
            out[key][row["split"]].append(m)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the run's output folder")
    ap.add_argument("--rewards", help="pair rewards CSV (default: RUN/pair_rewards.csv)")
    a = ap.parse_args()
    path = a.rewards or os.path.join(a.run, "pair_rewards.csv")
    read = margins(path)
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["reward", "epoch", "step", "split", "pairs", "accuracy", "mean_margin",
                "sd_margin", "mean_over_sd", "transfer"])
    for (reward, epoch, step), splits in read.items():
        train_mean = statistics.fmean(splits["train"]) if splits.get("train") else 0.0
        for split, ms in splits.items():
            mean, sd = statistics.fmean(ms), statistics.pstdev(ms)
            accuracy = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in ms) / len(ms)
            transfer = mean / train_mean if split != "train" and train_mean != 0 else ""
            w.writerow([reward, epoch, step, split, len(ms), f"{accuracy:.4f}", f"{mean:.6g}",
                        f"{sd:.6g}", f"{mean / sd:.4f}" if sd > 0 else "",
                        f"{transfer:.4f}" if transfer != "" else ""])


if __name__ == "__main__":
    main()
