#!/usr/bin/env python3
"""rmflow's `ham-cycle` on a pretrained checkpoint against the same work in PyTorch + transformers:
seconds per IM-RM training step and generated tokens per second (issue #45).

rmflow runs first (`ham-cycle --model MODEL`, a small config: n vertices, `--steps` steps of 32
pairs, one epoch, generation on the first 8 test prompts, no enumeration); PyTorch then trains
on the same pairs (rmflow's `pairs.jsonl`) as the official code does: `<sep>`, `<edge_sep>` added
with `add_tokens`, `resize_token_embeddings`, the chat template, 32 pairs per step as 2
micro-batches of 16, Adam at rmflow's lr, f32, the IM-RM loss with a frozen reference; and
decodes the same 8 prompts (left-padded, one batch) with `generate`, sampled (T = 1, no top-k or
top-p) and greedy, at most `2n + 8` new tokens, as rmflow does. Reported: the median seconds per
step of each side (PyTorch: its first step, a warm-up, left out; rmflow: the mean over its
steps), generated tokens per second (eos included) and the ratios. Run in a throw-away venv with
torch and transformers on an otherwise idle machine; never run by tests.

    python scripts/bench_ham_cycle_torch.py --model models/SmolLM2-135M-Instruct \\
        [--rmflow target/release/rmflow] [--vertices 6] [--steps 3] [--threads 2]
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer


def rmflow_side(args, work):
    cfg = os.path.join(work, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""seed = 7
[data]
vertices = {args.vertices}
train_pairs = {32 * args.steps}
test_pairs = 8
[train]
lr = 1e-6
epochs = 1
pairs_per_step = 32
micro_batch = 16
eval_batch = 16
[eval]
exact = false
prompts = 8
""")
    out = os.path.join(work, "rmflow")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    subprocess.run([args.rmflow, "ham-cycle", "--config", cfg, "--model", args.model, "--out", out],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.load(open(os.path.join(out, "summary.json")))
    run = next(r for r in summary["runs"] if r["reward"] == "imrm")
    rows = [r for r in csv.DictReader(open(os.path.join(out, "metrics.csv"))) if r["reward"] == "imrm"]
    tokens = sum(int(r["generated_tokens"]) for r in rows)
    seconds = sum(float(r["generation_seconds"]) for r in rows)
    pairs = [json.loads(line) for line in open(os.path.join(out, "pairs.jsonl"))]
    return run["step_seconds"] / run["steps"], tokens / seconds, pairs


def encode(tok, prompt, response):
    p = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                add_generation_prompt=True)
    full = tok.apply_chat_template([{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": response}], tokenize=False)
    return (tok(p, add_special_tokens=False)["input_ids"],
            tok(full[len(p):], add_special_tokens=False)["input_ids"])


def log_probs(model, seqs):
    """Sum of each sequence's response-token log-probabilities (right-padded batch)."""
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    resp = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, :len(p) + len(r)] = 1
        resp[i, len(p):len(p) + len(r)] = True
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (lp * resp[:, 1:]).sum(-1)


def torch_side(args, pairs, lr, beta):
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.add_tokens(["<sep>", "<edge_sep>"])
    policy = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    for m in (policy, reference):
        m.resize_token_embeddings(len(tok))
    reference.eval()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    train = [p for p in pairs if p["split"] == "train"]
    times = []
    for s in range(args.steps):
        batch = train[32 * s:32 * (s + 1)]
        t0 = time.perf_counter()
        for micro in (batch[:16], batch[16:]):
            seqs = [encode(tok, p["prompt"], p[side]) for p in micro for side in ("chosen", "rejected")]
            with torch.no_grad():
                ref = log_probs(reference, seqs)
            lp = log_probs(policy, seqs)
            r = beta * (lp - ref)
            loss = -F.logsigmoid(r[0::2] - r[1::2]).mean() * len(micro) / len(batch)
            loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    test = [p for p in pairs if p["split"] == "test"][:8]
    tok.padding_side = "left"
    prompts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for p in test]
    inputs = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    new = 2 * args.vertices + 8
    tokens, seconds = 0, 0.0
    for sample in (True, False):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = policy.generate(**inputs, max_new_tokens=new, do_sample=sample, temperature=1.0,
                                  top_k=0, top_p=1.0, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - t0
        gen = out[:, inputs["input_ids"].shape[1]:]
        for row in gen.tolist():
            stop = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            tokens += stop
    return statistics.median(times[1:] or times), tokens / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rmflow", default="target/release/rmflow")
    ap.add_argument("--vertices", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rm_step, rm_gen, pairs = rmflow_side(args, work)
    th_step, th_gen = torch_side(args, pairs, 1e-6, 0.01)
    print(f"model: {args.model}, n = {args.vertices}, {args.steps} steps of 32 pairs, {args.threads} threads")
    print(f"{'':<28} {'rmflow':>10} {'PyTorch':>10} {'rmflow/PyTorch':>15}")
    print(f"{'IM-RM seconds per step':<28} {rm_step:>10.2f} {th_step:>10.2f} {rm_step / th_step:>15.2f}")
    print(f"{'generated tokens per second':<28} {rm_gen:>10.1f} {th_gen:>10.1f} {rm_gen / th_gen:>15.2f}")


if __name__ == "__main__":
    main()
