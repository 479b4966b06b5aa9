#!/usr/bin/env python3
"""Writes tests/fixtures/torch_randperm_875.json: what torch's CPU generator draws for the official
persona datamodule (persona_controlled_datamodule.py): randperm(500) with generator seed 875, then
the 4 randint(0, 2) draws of each of the 80 + 40 examples (yes prefix, yes word, no prefix, no
word). Needs torch (a throw-away venv: python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch).
"""
import json
import sys

import torch

g = torch.Generator().manual_seed(875)
perm = torch.randperm(500, generator=g).tolist()
draws = [torch.randint(low=0, high=2, size=(1,), generator=g).item() for _ in range(4 * 120)]
out = {"torch": torch.__version__, "seed": 875, "n": 500, "perm": perm, "randint_high": 2,
       "randint": draws}
path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torch_randperm_875.json"
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path} (torch {torch.__version__})")
