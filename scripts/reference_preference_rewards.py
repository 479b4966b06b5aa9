#!/usr/bin/env python3
"""Regenerates tests/fixtures/reference/smollm2_uf_imrm_no_ref.json: the IM-RM-without-reference
rewards `β Σ_k ln π(y_k | x, y_<k)` of 8 UltraFeedback pairs on SmolLM2-135M-Instruct, computed as
the official code computes them, so that tests/lm_gguf.rs can check `rmflow lm-recipe` on preference
data (reading the `save_to_disk` folder, the sample, the chat template, the tokenization and the
forward) against `transformers` with no Python at test time.

Independent of rmflow throughout:
- the model and tokenizer are `transformers`' own load of the GGUF file
  (`from_pretrained(DIR, gguf_file=NAME)`, as scripts/reference_gguf.py), with SmolLM2's
  pre-tokenizer (digits split before the byte-level regex, which the GGUF conversion drops);
- the pairs are read with pyarrow from the official `save_to_disk` folder
  (experiments/data/exrm-vs-imrm/ultrafeedback_paraphrase, split `train`, columns `prompt`,
  `orig_chosen`, `orig_rejected`), and the 8 are the first 8 of
  `torch.randperm(200, generator=torch.Generator().manual_seed(517))`, the draw of `limit = 8`;
- each pair goes through the official `convert_preference_batch_to_chat_format`
  (`apply_chat_template` of the user turn with the generation prompt; the response is what the
  full conversation adds) and is tokenized as the official code does (prompt and response each on
  their own, no special tokens added);
- float32 forward of each sequence alone, unpadded; `log_softmax`; the response tokens' terms
  summed; times β = 0.01.

Usage (a throw-away venv is enough; nothing here is needed by tests):
    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers gguf pyarrow
    /tmp/refvenv/bin/python scripts/reference_preference_rewards.py GGUF_FILE [OUT_JSON]
"""
import glob
import json
import os
import sys

import pyarrow.ipc as ipc
import torch
from tokenizers import pre_tokenizers
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

DATA = "experiments/data/exrm-vs-imrm/ultrafeedback_paraphrase/train"
BETA = 0.01
PAIRS = 8
SEED = 517


def main():
    gguf = os.path.abspath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/reference/smollm2_uf_imrm_no_ref.json"
    torch.set_num_threads(2)
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # SmolLM2's own tokenizer.json splits digits before the byte-level regex (as llama.cpp's
    # `smollm` pre-tokenizer type); transformers' GGUF conversion drops that step, which changes
    # "\n\n" before a digit from one token into two (measured: 2 of these 8 pairs, their
    # rewards 5% apart). Restored here; the vocabulary and merges stay transformers' own.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    (arrow,) = glob.glob(os.path.join(DATA, "data-*.arrow"))
    table = ipc.open_stream(open(arrow, "rb")).read_all()
    prompts = table["prompt"].to_pylist()
    chosen = table["orig_chosen"].to_pylist()
    rejected = table["orig_rejected"].to_pylist()
    perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(SEED))
    rows = perm[:PAIRS].tolist()
    pairs = []
    for row in rows:
        message = [{"role": "user", "content": prompts[row]}]
        prompt = tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        rewards = []
        for response in (chosen[row], rejected[row]):
            full = tok.apply_chat_template(
                message + [{"role": "assistant", "content": response}], tokenize=False
            )
            response_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + response_ids])
            with torch.no_grad():
                logits = model(ids).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            start = len(prompt_ids)
            terms = [lp[k - 1, ids[0, k]].item() for k in range(start, ids.shape[1])]
            rewards.append({"reward": BETA * sum(terms), "tokens": len(response_ids)})
        pairs.append({"row": row, "chosen": rewards[0], "rejected": rewards[1]})
    record = {
        "data": DATA,
        "columns": {"prompt": "prompt", "chosen": "orig_chosen", "rejected": "orig_rejected"},
        "limit": PAIRS,
        "sample_seed": SEED,
        "beta": BETA,
        "pairs": pairs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "gguf": name,
    }
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: rows {rows}")


if __name__ == "__main__":
    main()
