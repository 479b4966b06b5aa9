#!/usr/bin/env python3
"""Writes tests/fixtures/reference/default_template.json: what the official code
(princeton-pli/exrm-vs-imrm, `utils/sharedmisc.py` `update_tokenizer` and
`update_model_num_embeddings_and_special_tokens`) does to a checkpoint without a chat template,
run by `transformers` on the tiny template-less fixtures (tests/fixtures/reference/gpt2 and
pythia, GPT-2 and GPT-NeoX), so that tests/lm_recipe.rs can check rmflow's default template with
no Python at test time.

For each case: the tokens added and len(tokenizer), the recipe's prompt and response texts
(`apply_chat_template` of the user turn with the generation prompt, and what the conversation with
the answer adds to it) and their ids (each text tokenized on its own, add_special_tokens=False),
and the resized embedding: its shape and the mean of the old rows (transformers' mean-resizing
draws the new rows from N(mean, 1e-9 Σ)).

Usage (a throw-away venv is enough):
    /tmp/refvenv/bin/python scripts/reference_default_template.py [FIXTURE_DIR]
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

# utils/strings.py of the official code (facts: the default tokens and template).
DEFAULT_USER_TOKEN = "<|user|>"
DEFAULT_ASSISTANT_TOKEN = "<|assistant|>"
DEFAULT_EOS_TOKEN = "<|endoftext|>"
DEFAULT_PADDING_TOKEN = "<|padding|>"
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>' + message['content'] + eos_token }}"
                 "{% elif message['role'] == 'system' %}{{ '<|assistant|>' + message['content'] + eos_token }}"
                 "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>'  + message['content'] + eos_token }}{% endif %}"
                 "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}")


def update_tokenizer(tokenizer):
    """The official update_tokenizer's steps, in its order."""
    added = 0
    if not tokenizer.pad_token_id:  # Python falsiness: a pad token with id 0 counts as missing
        if tokenizer.chat_template:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        else:
            added += tokenizer.add_special_tokens({"pad_token": DEFAULT_PADDING_TOKEN})
    if not tokenizer.eos_token:
        added += tokenizer.add_special_tokens({"eos_token": DEFAULT_EOS_TOKEN})
    if not tokenizer.chat_template:
        added += tokenizer.add_special_tokens(
            {"additional_special_tokens": [DEFAULT_USER_TOKEN, DEFAULT_ASSISTANT_TOKEN]})
        tokenizer.chat_template = CHAT_TEMPLATE
    return added


CASES = [
    # (fixture, tokenizer_config.json written beside it or None)
    ("gpt2", None),
    ("pythia", None),
    # eos present; pad present with id 0, which the official check takes for missing.
    ("pythia", {"eos_token": "w63", "pad_token": "w0"}),
]
TURNS = [("w5 w17 w33", "w2 w60"), ("w12", "w3 w3 w50")]


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/reference"
    out = []
    for name, cfg in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, name)
            shutil.copytree(os.path.join(fixtures, name), d)
            kwargs = {}
            if cfg is not None:
                with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                    json.dump(cfg, f)
                kwargs = cfg
            tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), **kwargs)
            before = len(tok)
            n_added = update_tokenizer(tok)
            model = AutoModelForCausalLM.from_pretrained(d)
            old = model.get_input_embeddings().weight.detach().clone()
            old_out = model.get_output_embeddings().weight.detach().clone()
            if n_added > 0:
                model.resize_token_embeddings(len(tok))  # mean_resizing=True by default
            new = model.get_input_embeddings().weight.detach()
            out_emb = model.get_output_embeddings().weight.detach()
            turns = []
            for question, answer in TURNS:
                user = [{"role": "user", "content": question}]
                prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
                full = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}],
                                               tokenize=False)
                response = full[len(prompt):]
                turns.append({
                    "question": question, "answer": answer, "prompt": prompt, "response": response,
                    "prompt_ids": tok(prompt, add_special_tokens=False)["input_ids"],
                    "response_ids": tok(response, add_special_tokens=False)["input_ids"],
                })
            out.append({
                "fixture": name, "tokenizer_config": cfg, "tokens_before": before,
                "tokens_added": n_added, "tokens_after": len(tok),
                "added": {t: tok.convert_tokens_to_ids(t) for t in
                          [DEFAULT_PADDING_TOKEN, DEFAULT_EOS_TOKEN, DEFAULT_USER_TOKEN, DEFAULT_ASSISTANT_TOKEN]
                          if t in tok.get_vocab()},
                "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                "embedding_rows_before": old.shape[0], "embedding_rows_after": new.shape[0],
                "old_row_mean": old.mean(0).tolist(),
                "new_rows": new[old.shape[0]:].tolist(),
                "output_old_row_mean": old_out.mean(0).tolist(),
                "output_new_rows": out_emb[old.shape[0]:].tolist(),
                "turns": turns,
            })
    path = os.path.join(fixtures, "default_template.json")
    with open(path, "w") as f:
        json.dump({"cases": out, "template": CHAT_TEMPLATE,
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__}},
                  f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
