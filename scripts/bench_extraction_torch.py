#!/usr/bin/env python3
"""PyTorch + transformers' no-grad forward over the sequences of an `rmflow lm-recipe` run
(its `sequences.jsonl`), padded batches of 32 with an attention mask, final hidden states only:
the peer of rmflow's feature extraction (docs/performance.md). Run in a throw-away venv with torch
and transformers; never run by tests.

    python scripts/bench_extraction_torch.py MODEL_DIR RUN_DIR/sequences.jsonl
"""
import json, time, sys, torch, resource
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
rows = [json.loads(l) for l in open(sys.argv[2])]
seqs = [r['ids'] for r in rows]
tokens = sum(len(s) for s in seqs)
t0 = time.time()
with torch.no_grad():
    for i in range(0, len(seqs), 32):
        b = seqs[i:i+32]; L = max(len(s) for s in b)
        ids = torch.zeros(len(b), L, dtype=torch.long); att = torch.zeros(len(b), L, dtype=torch.long)
        for r, s in enumerate(b):
            ids[r, :len(s)] = torch.tensor(s); att[r, :len(s)] = 1
        h = m.model(input_ids=ids, attention_mask=att).last_hidden_state
dt = time.time() - t0
print(f"pytorch no-grad forward: {len(seqs)} sequences, {tokens} tokens, {dt:.1f} s, {tokens/dt:.0f} tok/s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e6:.2f} GB")
