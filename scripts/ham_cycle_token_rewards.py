#!/usr/bin/env python3
"""What a `rmflow ham-cycle` IM-RM's training did to each kind of response token: the mean of
`ln π − ln π_ref` per occurrence (nats; the reward's `β` divided out), per evaluation, split and
side, for the vertices (every digit token), the separator `<sep>` and each other token (the
template's end, a newline), and their sum over a response as the run's tokens make it up.
Negative: the policy now gives that token less probability than `π_ref` does, where it stands
in the split's responses.

Reads the run's `token_rewards.csv` (or the rows so far: `rmflow lm-progress RUN --tokens`) and
`β` from its `config.toml` (or `--beta`). Standard library only. Writes CSV on stdout:
`epoch,split,side,kind,occurrences_per_response,mean_log_ratio`.

    python3 scripts/ham_cycle_token_rewards.py RUN_DIR [--tokens FILE] [--beta B] [--split test]
"""

import argparse
import csv
import os
import sys
from collections import defaultdict


def beta_of(run):
    """`[train] beta` of the run's config.toml (rmflow's default 0.01 where absent)."""
    import tomllib

    path = os.path.join(run, "config.toml")
    try:
        with open(path, "rb") as f:
            return float(tomllib.load(f).get("train", {}).get("beta", 0.01))
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found; give --beta")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the ham-cycle --out folder")
    ap.add_argument("--tokens", help="token_rewards.csv (default: RUN/token_rewards.csv)")
    ap.add_argument("--beta", type=float, help="the IM-RM's β (default: RUN/config.toml's)")
    ap.add_argument("--split", help="one split only (train or test)")
    a = ap.parse_args()
    beta = a.beta if a.beta is not None else beta_of(a.run)
    sums = defaultdict(lambda: [0.0, 0])
    responses = {}
    with open(a.tokens or os.path.join(a.run, "token_rewards.csv")) as f:
        for row in csv.DictReader(f):
            if row["reward"] != "imrm" or (a.split and row["split"] != a.split):
                continue
            token = row["token"]
            kind = "vertex" if token.isdigit() else token
            key = (int(row["epoch"]), row["split"], row["side"])
            count = int(row["count"])
            s = sums[key + (kind,)]
            s[0] += float(row["mean"]) * count
            s[1] += count
            # Every response ends with one end-of-turn token: its count is the responses'.
            if token in ("<|im_end|>", "<|endoftext|>", "</s>", "<eos>"):
                responses[key] = count
    # The whole response: the sum over its tokens, per response.
    for key, n in responses.items():
        total = sum(v[0] for k, v in list(sums.items()) if k[:3] == key)
        sums[key + ("response",)] = [total, n]
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["epoch", "split", "side", "kind", "occurrences_per_response", "mean_log_ratio"])
    for key in sorted(sums, key=lambda k: (k[0], k[1] != "train", k[2], k[3] == "response", k[3])):
        total, count = sums[key]
        n = responses.get(key[:3])
        per = f"{count / n:.4g}" if n else ""
        w.writerow([*key, per, f"{total / count / beta:.6g}"])

if __name__ == "__main__":
    main()
