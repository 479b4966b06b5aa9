#!/usr/bin/env python3
"""Cross-check of `rmflow ham-cycle`'s pretraining in PyTorch + transformers: does a small Llama
learn that a vertex order never repeats a vertex, and after how many steps?

The same task as rmflow's pretraining (MATH.md §7; src/lm/cycle/pretrain.rs): prompts in the
official format (`<|user|>Vertices: <sep>0 ... Edges: <sep>u<edge_sep>v ...<eos><|assistant|>`,
one token per word as rmflow's word-level vocabulary has it), responses uniformly random vertex
orders, next-token loss on the response tokens (eos included), AdamW without weight decay, linear
warm-up, optional global gradient-norm clipping. The graphs are drawn by Python's `random`, not
rmflow's generator, so the numbers compare in distribution, not bit for bit. The loss reached by
a model uniform over orders is `ln n! / (2n)` per response token, the plateau of one uniform over
vertices with repeats `n ln n / (2n)`. Run in a throw-away venv with torch and transformers; never
run by tests.

    python scripts/cycle_pretrain_torch.py --dim 128 --heads 8 --steps 600 [--warmup 200] [--clip 1.0]
"""
import argparse
import math
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--vertices", type=int, default=6)
    a.add_argument("--edge-probability", type=float, default=0.2)
    a.add_argument("--dim", type=int, default=128)
    a.add_argument("--layers", type=int, default=2)
    a.add_argument("--heads", type=int, default=8)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--steps", type=int, default=600)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--warmup", type=int, default=200, help="warm-up steps (0: none)")
    a.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    a.add_argument("--graphs", type=int, default=4096)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--seed", type=int, default=1)
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    n = args.vertices
    words = ["<|padding|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<sep>", "<edge_sep>"]
    words += ["Vertices", "Edges", ":"] + [str(v) for v in range(n)]
    tok = {w: i for i, w in enumerate(words)}
    rng = random.Random(args.seed)

    def graph():
        order = list(range(n))
        rng.shuffle(order)
        edges = {tuple(sorted((order[i], order[(i + 1) % n]))) for i in range(n)}
        for u in range(n):
            for v in range(u + 1, n):
                if (u, v) not in edges and rng.random() < args.edge_probability:
                    edges.add((u, v))
        edges = sorted(edges)
        rng.shuffle(edges)
        return edges

    graphs = [graph() for _ in range(args.graphs)]

    def sequence():
        ids = [tok["<|user|>"], tok["Vertices"], tok[":"]]
        for v in range(n):
            ids += [tok["<sep>"], tok[str(v)]]
        ids += [tok["Edges"], tok[":"]]
        for u, v in rng.choice(graphs):
            ids += [tok["<sep>"], tok[str(u)], tok["<edge_sep>"], tok[str(v)]]
        ids += [tok["<|endoftext|>"], tok["<|assistant|>"]]
        start = len(ids)
        order = list(range(n))
        rng.shuffle(order)
        for i, v in enumerate(order):
            ids += ([tok["<sep>"]] if i else []) + [tok[str(v)]]
        return ids + [tok["<|endoftext|>"]], start

    cfg = LlamaConfig(vocab_size=len(words), hidden_size=args.dim, intermediate_size=3 * args.dim,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.heads, max_position_embeddings=512,
                      tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg)
    print(f"parameters {sum(p.numel() for p in model.parameters())}; uniform over orders "
          f"{math.log(math.factorial(n)) / (2 * n):.4f}, over vertices with repeats "
          f"{n * math.log(n) / (2 * n):.4f} nats per response token")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0)
    t0 = time.time()
    print("step,loss,seconds")
    for step in range(1, args.steps + 1):
        batch = [sequence() for _ in range(args.batch)]
        width = max(len(s) for s, _ in batch)
        ids = torch.zeros(args.batch, width, dtype=torch.long)
        labels = torch.full((args.batch, width), -100)
        for r, (s, start) in enumerate(batch):
            ids[r, :len(s)] = torch.tensor(s)
            labels[r, start:len(s)] = torch.tensor(s[start:])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        warm.step()
        if step % 50 == 0 or step == args.steps:
            print(f"{step},{loss.item():.4f},{time.time() - t0:.1f}", flush=True)


if __name__ == "__main__":
    main()
