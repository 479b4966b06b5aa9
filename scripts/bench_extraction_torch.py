#!/usr/bin/env python3
"""Feature extraction (head mode) against PyTorch + transformers' no-grad forward.

PyTorch's side: a no-grad forward over the sequences of an `rmflow lm-recipe` run (its
`sequences.jsonl`), padded batches of 32 with an attention mask, final hidden states only (the
body: `AutoModel` for BERT, `AutoModelForCausalLM(...).model` for the causal families), every
token of every sequence.

rmflow's side (with --rmflow): `lm-recipe --mode head --reward exrm --epochs 1` on the same
model, whose `recipe.json` records the extraction's wall time and tokens (`runs[0].extraction`);
with `--command lm`, Theorem 2's head-only `rmflow lm` (config experiments/persona.toml unless
--config), whose `lm.json` records `seconds.extract` and `tokens_encoded`.
The two are alternated `--repeats` times and the medians compared. Run in a throw-away venv with
torch and transformers; never run by tests (docs/performance.md).

    python scripts/bench_extraction_torch.py MODEL_DIR [RUN_DIR/sequences.jsonl]
        [--rmflow target/release/rmflow [--command lm-recipe|lm] [--config FILE] [--plain]]
        [--repeats 2] [--threads 2]

Without a sequences file, the one of rmflow's first run is used (so --rmflow is needed).
"""
import argparse, json, os, re, resource, statistics, subprocess, sys, tempfile, time


def torch_forward(model_dir, seqs, threads, batch):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    torch.set_num_threads(threads)
    kind = json.load(open(os.path.join(model_dir, "config.json"))).get("model_type")
    if kind == "bert":
        body = AutoModel.from_pretrained(model_dir, dtype=torch.float32, add_pooling_layer=False).eval()
    else:
        body = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().model
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            b = seqs[i:i + batch]
            n = max(map(len, b))
            ids = torch.zeros(len(b), n, dtype=torch.long)
            att = torch.zeros(len(b), n, dtype=torch.long)
            for r, s in enumerate(b):
                ids[r, :len(s)] = torch.tensor(s)
                att[r, :len(s)] = 1
            body(input_ids=ids, attention_mask=att).last_hidden_state
    return time.time() - t0


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rmflow_extraction(args, work):
    text = open(args.config).read()
    if args.plain:
        text = re.sub(r"(?m)^chat_template\s*=.*$", "chat_template = false", text)
    text = re.sub(r'(?m)^statements\s*=\s*"(.*)"', lambda m: f'statements = "{os.path.join(ROOT, m.group(1))}"', text)
    config = os.path.join(work, "extract.toml")
    open(config, "w").write(text)
    out = os.path.join(work, "rmflow")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.command == "lm":
        cmd = [args.rmflow, "lm", "--model", args.model, "--config", config, "--out", out, "--force"]
    else:
        cmd = [args.rmflow, "lm-recipe", "--model", args.model, "--config", config, "--out", out,
               "--mode", "head", "--reward", "exrm", "--epochs", "1", "--force"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.command == "lm":
        run = json.load(open(os.path.join(out, "lm.json")))
        seconds, tokens = run["seconds"]["extract"], run["tokens_encoded"]
        e = {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}
    else:
        e = json.load(open(os.path.join(out, "recipe.json")))["runs"][0]["extraction"]
    return e, os.path.join(out, "sequences.jsonl")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("sequences", nargs="?")
    ap.add_argument("--rmflow", help="rmflow binary (a --features lm build)")
    ap.add_argument("--command", choices=["lm-recipe", "lm"], default="lm-recipe",
                    help="rmflow's head-only run: the recipe's (default) or Theorem 2's `lm`")
    ap.add_argument("--config", help="default: experiments/persona_paper.toml (lm-recipe), "
                    "experiments/persona.toml (lm)")
    ap.add_argument("--plain", action="store_true", help="chat_template = false (models without one)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if not args.config:
        name = "persona.toml" if args.command == "lm" else "persona_paper.toml"
        args.config = os.path.join(ROOT, "experiments", name)
    if not args.sequences and not args.rmflow:
        sys.exit("give a sequences.jsonl or --rmflow")
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="rmflow-extract-") as work:
        path = args.sequences
        for r in range(args.repeats):
            if args.rmflow:
                e, produced = rmflow_extraction(args, work)
                path = path or produced
                ours.append(e)
            seqs = [json.loads(l)["ids"] for l in open(path)]
            tokens = sum(map(len, seqs))
            dt = torch_forward(args.model, seqs, args.threads, args.batch)
            theirs.append(tokens / dt)
            line = f"repeat {r + 1}: PyTorch {tokens / dt:.0f} tok/s ({dt:.1f} s)"
            if ours:
                line += f", rmflow {ours[-1]['tokens_per_second']:.0f} tok/s ({ours[-1]['seconds']:.1f} s)"
            print(line, flush=True)
    print(f"model {args.model}: {len(seqs)} sequences, {tokens} tokens, {args.threads} threads, "
          f"batches of {args.batch}, {args.repeats} alternated repeats")
    t = statistics.median(theirs)
    print(f"PyTorch no-grad forward: {t:.0f} tok/s (median), peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if ours:
        if ours[0]["tokens"] != tokens:
            print(f"warning: rmflow read {ours[0]['tokens']} tokens, PyTorch {tokens}")
        o = statistics.median(e["tokens_per_second"] for e in ours)
        print(f"rmflow extraction:       {o:.0f} tok/s (median)")
        print(f"ratio rmflow / PyTorch tokens per second: {o / t:.2f}")


if __name__ == "__main__":
    main()
