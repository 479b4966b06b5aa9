#!/usr/bin/env python3
"""Regenerates tests/fixtures/reference/: tiny *random* checkpoints of every causal family built by
Hugging Face `transformers` (from a small config, no download) and their logits on fixed inputs, so
that tests/lm_reference.rs can check rmflow's forwards against the reference implementation with no
Python at test time.

BERT (an encoder without LM head) is included through rmflow's own definition of its logits,
`h Eᵀ` with the word embeddings `E`.

Usage (a throw-away venv is enough):
    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers
    /tmp/refvenv/bin/python scripts/reference_fixtures.py [OUT_DIR]

Each fixture folder holds config.json and model.safetensors (as `save_pretrained` writes them),
a word-level tokenizer.json (rmflow's loader needs one; the inputs are given as ids), and
reference.json: the input ids, the logits of every position of every input (each input run alone,
unpadded, float32) and the versions that produced them. chat_templates.json holds templates in the
style of the instruct models' and their renderings by `apply_chat_template`.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

VOCAB = 64
DIM = 32
SEED = 20261127
INPUTS = [[5, 17, 33, 2, 60, 41, 8], [12, 3, 3, 50, 27], [63, 0, 9, 44, 18, 31, 22, 7, 56]]


def families():
    common = dict(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=3 * DIM, max_position_embeddings=128)
    return {
        "llama-gqa": (LlamaForCausalLM, LlamaConfig(**common, num_key_value_heads=2,
                                                    rms_norm_eps=1e-6, tie_word_embeddings=False)),
        "llama-tied": (LlamaForCausalLM, LlamaConfig(**common, num_key_value_heads=4,
                                                     rms_norm_eps=1e-6, tie_word_embeddings=True)),
        # Llama-3 frequency scaling: with head_dim 8 the four rotary wavelengths fall in the kept,
        # smoothed and scaled bands of original_max_position_embeddings = 64.
        "llama3-rope": (LlamaForCausalLM, LlamaConfig(
            **common, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64})),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, num_key_value_heads=2,
                                                rms_norm_eps=1e-6, tie_word_embeddings=False)),
        "qwen2-tied": (Qwen2ForCausalLM, Qwen2Config(**common, num_key_value_heads=4,
                                                     rms_norm_eps=1e-6, tie_word_embeddings=True)),
        "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=VOCAB, n_embd=DIM, n_layer=2, n_head=4,
                                             n_positions=128, activation_function="gelu_new",
                                             bos_token_id=None, eos_token_id=None)),
        # Pythia: parallel residual, rotary on a quarter of each head's dimensions.
        "pythia": (GPTNeoXForCausalLM, GPTNeoXConfig(**common, rotary_pct=0.25,
                                                     use_parallel_residual=True)),
        "neox-sequential": (GPTNeoXForCausalLM, GPTNeoXConfig(**common, rotary_pct=0.5,
                                                              use_parallel_residual=False)),
        # Encoder: no LM head; rmflow's "logits" are h Eᵀ with the word embeddings E (the tied
        # unembedding of its IM-RM), computed here from BertModel's last hidden state.
        "bert": (BertModel, BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=3 * DIM,
                                       max_position_embeddings=128, hidden_act="gelu")),
    }


def randomise(model, gen):
    """Every parameter drawn (biases and norm weights too, so that none is a no-op)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def word_level_tokenizer(path, bert=False):
    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if bert else []
    vocab = {(names[i] if i < len(names) else f"w{i}"): i for i in range(VOCAB)}
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}}
    with open(path, "w") as f:
        json.dump(tok, f, indent=1)


CHAT_TEMPLATES = {
    # ChatML (Qwen2.5-Instruct's layout, with its default system message).
    "chatml": (
        "{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
        "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    # Llama-3 layout: bos_token, headers, stripped contents, raise_exception on a bad role.
    "llama3": (
        "{{- bos_token }}{%- for message in messages %}"
        "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
        "{{- raise_exception('unknown role ' + message['role']) }}{%- endif %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{%- endfor %}{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
}
CHAT_CASES = [
    [{"role": "user", "content": "Is the following statement something you would say?\n\"I like people.\""}],
    [{"role": "user", "content": "  Question with spaces  "},
     {"role": "assistant", "content": "In my view, the answer is yes"}],
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/reference"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for k, (name, (cls, config)) in enumerate(families().items()):
        gen = torch.Generator().manual_seed(SEED + k)
        model = (cls(config, add_pooling_layer=False) if cls is BertModel else cls(config))
        model = model.to(torch.float32).eval()
        randomise(model, gen)
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        for extra in ("generation_config.json",):
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        word_level_tokenizer(os.path.join(d, "tokenizer.json"), bert=cls is BertModel)
        logits = []
        with torch.no_grad():
            for ids in INPUTS:
                out_ = model(input_ids=torch.tensor([ids]))
                if cls is BertModel:
                    e = model.embeddings.word_embeddings.weight
                    logits.append((out_.last_hidden_state[0] @ e.T).tolist())
                else:
                    logits.append(out_.logits[0].tolist())
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"model_type": config.model_type, "inputs": INPUTS, "logits": logits,
                       "versions": versions}, f)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "gpt2", "tokenizer.json"))
    renders = []
    for tname, template in CHAT_TEMPLATES.items():
        for messages in CHAT_CASES:
            for gen_prompt in (False, True):
                text = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=gen_prompt,
                                               bos_token="<|begin_of_text|>")
                renders.append({"template": tname, "messages": messages,
                                "add_generation_prompt": gen_prompt, "text": text})
    with open(os.path.join(out, "chat_templates.json"), "w") as f:
        json.dump({"templates": CHAT_TEMPLATES, "bos_token": "<|begin_of_text|>",
                   "renders": renders, "versions": versions}, f, indent=1)


if __name__ == "__main__":
    main()
