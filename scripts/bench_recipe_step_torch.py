#!/usr/bin/env python3
"""rmflow's `lm-recipe` optimizer step against the same step in PyTorch + transformers.

Both sides train from the same checkpoint on the same sequences (rmflow's `sequences.jsonl`),
the same steps (`step_pairs` of rmflow's `recipe.json`: the pairs of each step in micro-batch
order), the same micro-batches, loss scaling, Adam and f32. Runs alternate (rmflow, PyTorch,
rmflow, ...) and the medians are reported, with the ratio, the peak resident memory of each
side and the per-step loss agreement (relative). Run in a throw-away venv with torch and
transformers; never run by tests.

    python scripts/bench_recipe_step_torch.py --model models/SmolLM2-135M-Instruct \
        [--rmflow target/release/rmflow] [--reward imrm|exrm] [--repeats 2] [--threads 2] [--epochs 2]
    python scripts/bench_recipe_step_torch.py --model models/SmolLM2-135M-Instruct \
        --config experiments/uf_shift.toml --set-limit 16 --epochs 1 --evaluation   # Section 5.2's sequences

Causal LMs and BERT checkpoints (BERT's IM-RM is rmflow's pseudo-likelihood proxy, its dropout
off as in rmflow; MiniLM needs --plain). The EX-RM head starts at zero on both sides (`train.head_init_std = 0`): rmflow's seeded random
head cannot be drawn in PyTorch. Timed: each optimizer step (forwards, backwards, update); not
timed: loading, the reference log-probabilities, evaluation (rmflow's `seconds_per_step` counts
the same). Peak RSS: rmflow's from GNU time (`/usr/bin/time`, else n/a), PyTorch's of this
process (the Python interpreter and torch included).
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rmflow_run(args, work, config):
    out = os.path.join(work, "rmflow")
    cmd = [args.rmflow, "lm-recipe", "--model", args.model, "--config", config, "--out", out,
           "--mode", "full", "--epochs", str(args.epochs), "--reward", args.reward, "--force"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    # rmflow's own peak RSS through GNU time (getrusage of a child would count the forked Python).
    timed = os.path.exists("/usr/bin/time")
    if timed:
        cmd = ["/usr/bin/time", "-f", "%M", "-o", os.path.join(work, "rss.txt")] + cmd
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recipe = json.load(open(os.path.join(out, "recipe.json")))
    run = next(r for r in recipe["runs"] if r["model"] == args.reward)
    losses = [float(line.split(",")[4]) for line in open(os.path.join(out, "history.csv")).read().splitlines()[1:]
              if line.split(",")[1] == args.reward]
    seqs = [json.loads(line) for line in open(os.path.join(out, "sequences.jsonl"))]
    peak = int(open(os.path.join(work, "rss.txt")).read().split()[-1]) * 1024 if timed else float("nan")
    return recipe, run, losses, seqs, peak


class TorchStep:
    """The recipe's step (rmflow src/lm/train/epochs.rs) in PyTorch."""

    def __init__(self, args, recipe, seqs):
        import torch
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(args.threads)
        self.torch = torch
        self.t = recipe["config"]["train"]
        self.reward = args.reward
        self.seqs = seqs
        train = next(s for s in recipe["splits"] if s["name"] == "train")
        self.chosen, self.rejected = train["chosen"], train["rejected"]
        kind = json.load(open(os.path.join(args.model, "config.json"))).get("model_type")
        # A masked encoder (BERT): rmflow's IM-RM is its pseudo-likelihood proxy (each response
        # token masked in turn, read at its own position through the tied word embeddings) and its
        # EX-RM reads the unmasked last response token (src/lm/train/features.rs).
        self.masked = kind == "bert"
        if self.masked:
            from transformers import AutoModel, AutoTokenizer
            self.model = AutoModel.from_pretrained(args.model, dtype=torch.float32, add_pooling_layer=False)
            self.mask_id = AutoTokenizer.from_pretrained(args.model).mask_token_id
        else:
            self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        # rmflow's forwards have no dropout; BERT's config has 0.1, so its dropout is switched
        # off (eval mode keeps the gradients). SmolLM2, Pythia and the tiny checkpoints have none.
        self.model.eval() if self.masked else self.model.train()
        params = [{"params": list(self.model.parameters()), "lr": self.t["lr"]}]
        if self.reward == "exrm":
            d = self.model.config.hidden_size
            self.head = torch.nn.Parameter(torch.zeros(d))
            params.append({"params": [self.head], "lr": self.t["head_lr"] or self.t["lr"]})
        else:
            with torch.no_grad():
                self.ref = {i: self.token_logprobs([i])[0].detach() for i in self.chosen + self.rejected}
        self.opt = torch.optim.Adam(params, betas=(self.t["beta1"], self.t["beta2"]), eps=self.t["eps"])

    def batch(self, idx):
        return self.pad([self.seqs[i]["ids"] for i in idx])

    def pad(self, ids):
        """Right-padded ids and their attention mask."""
        torch = self.torch
        n = max(map(len, ids))
        x = torch.zeros((len(ids), n), dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for r, s in enumerate(ids):
            x[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        return x, mask

    def token_logprobs(self, idx):
        """ln π(y_k | ·) of every response token, one tensor per sequence."""
        if self.masked:
            return self.masked_logprobs(idx)
        x, mask = self.batch(idx)
        logp = self.torch.log_softmax(self.model(input_ids=x, attention_mask=mask).logits, dim=-1)
        out = []
        for r, i in enumerate(idx):
            s = self.seqs[i]
            pos = self.torch.arange(s["response_start"], s["response_end"])
            out.append(logp[r, pos - 1, x[r, pos]])
        return out

    def masked_logprobs(self, idx):
        """The pseudo-likelihood proxy: each response token masked in turn, one padded forward."""
        torch = self.torch
        rows, at, owner = [], [], []
        for r, i in enumerate(idx):
            s = self.seqs[i]
            for k in range(s["response_start"], s["response_end"]):
                m = list(s["ids"])
                m[k] = self.mask_id
                rows.append(m)
                at.append(k)
                owner.append((r, s["ids"][k]))
        x, mask = self.pad(rows)
        h = self.model(input_ids=x, attention_mask=mask).last_hidden_state
        h = h[torch.arange(len(rows)), torch.tensor(at)]
        logp = torch.log_softmax(h @ self.model.embeddings.word_embeddings.weight.T, dim=-1)
        picked = logp[torch.arange(len(rows)), torch.tensor([t for _, t in owner])]
        return [picked[[j for j, (r, _) in enumerate(owner) if r == q]] for q in range(len(idx))]

    def rewards(self, idx):
        torch = self.torch
        if self.reward == "imrm":
            lp = self.token_logprobs(idx)
            return torch.stack([self.t["beta"] * (a - self.ref[i]).sum() for a, i in zip(lp, idx)])
        x, mask = self.batch(idx)
        body = self.model if self.masked else self.model.model
        h = body(input_ids=x, attention_mask=mask).last_hidden_state
        last = torch.tensor([self.seqs[i]["response_end"] - 1 for i in idx])
        return h[torch.arange(len(idx)), last] @ self.head

    def evaluation_rate(self, batch):
        """Tokens per second of scoring every sequence once (no gradient), as rmflow's evaluation
        does: the sequences in length order, `batch` per forward (rmflow's `eval_batch`), the
        log-probabilities (IM-RM) or the last hidden states (EX-RM) read; tokens counted as
        rmflow counts them (every sequence's ids)."""
        torch = self.torch
        order = sorted(range(len(self.seqs)), key=lambda i: len(self.seqs[i]["ids"]))
        tokens = sum(len(s["ids"]) for s in self.seqs)
        t0 = time.perf_counter()
        with torch.no_grad():
            for k in range(0, len(order), batch):
                idx = order[k:k + batch]
                if self.reward == "imrm":
                    self.token_logprobs(idx)
                else:
                    x, mask = self.batch(idx)
                    body = self.model if self.masked else self.model.model
                    body(input_ids=x, attention_mask=mask)
        return tokens / (time.perf_counter() - t0)

    def step(self, pairs):
        torch = self.torch
        micro, acc = self.t["micro_batch"], -(-self.t["pairs_per_step"] // self.t["micro_batch"])
        reported = 0.0
        self.opt.zero_grad(set_to_none=True)
        for k in range(0, len(pairs), micro):
            ps = pairs[k:k + micro]
            r = self.rewards([self.chosen[p] for p in ps] + [self.rejected[p] for p in ps])
            terms = torch.nn.functional.softplus(r[len(ps):] - r[:len(ps)])
            (terms.sum() / (len(ps) * acc)).backward()
            reported += terms.sum().item() / len(pairs)
        self.opt.step()
        return reported


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face folder (rmflow loads it too)")
    ap.add_argument("--rmflow", default=os.path.join(ROOT, "target/release/rmflow"))
    ap.add_argument("--config", default=os.path.join(ROOT, "experiments/persona_paper.toml"))
    ap.add_argument("--reward", default="imrm", choices=["imrm", "exrm"])
    ap.add_argument("--repeats", type=int, default=2, help="alternated runs of each side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2,
                    help="epochs of rmflow's run, replayed step by step in PyTorch (one epoch of persona_paper.toml: 3 steps; "
                         "the default 2 gives 6 steps, so the loss agreement covers at least 5)")
    ap.add_argument("--set-limit", type=int, default=0,
                    help="preference configs ([preferences]): at most this many pairs per set (a `limit` added "
                         "to the training set and every evaluation set), so that a bench run stays short")
    ap.add_argument("--evaluation", action="store_true",
                    help="also time the evaluation: every sequence scored once, tokens per second on both sides "
                         "(rmflow's `evaluation_tokens_per_second`)")
    ap.add_argument("--plain", action="store_true",
                    help="responses.chat_template = false (checkpoints without a template, such as lm-tiny's)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rmflow-bench-")
    text = open(args.config).read()
    text = re.sub(r"(?m)^head_init_std\s*=.*$", "head_init_std = 0.0", text)
    if args.plain:
        text = re.sub(r"(?m)^chat_template\s*=.*$", "chat_template = false", text)
    text = re.sub(r'(?m)^statements\s*=\s*"(.*)"', lambda m: f'statements = "{os.path.join(ROOT, m.group(1))}"', text)
    text = re.sub(r'path\s*=\s*"(experiments/[^"]*)"', lambda m: f'path = "{os.path.join(ROOT, m.group(1))}"', text)
    if args.set_limit:
        text = re.sub(r"(?m)^(train = \{.*)\}\s*$", lambda m: f"{m.group(1)}, limit = {args.set_limit} }}", text)
        text = re.sub(r"(?m)^(\[\[preferences\.eval\]\])$", lambda m: f"{m.group(1)}\nlimit = {args.set_limit}", text)
    config = os.path.join(work, "bench.toml")
    open(config, "w").write(text)
    rm_times, pt_times, agreement, rm_rates, pt_rates = [], [], [], [], []
    rm_peaks, pt_peak = [], 0
    for rep in range(args.repeats):
        recipe, run, rm_losses, seqs, rm_peak = rmflow_run(args, work, config)
        rm_peaks.append(rm_peak)
        if recipe["added_tokens"]:
            sys.exit("rmflow added tokens (the default chat template) and resized the embeddings with its own "
                     "seeded draws, which PyTorch cannot repeat: use a checkpoint with a chat template, or --plain")
        rm_times.append(run["seconds_per_step"])
        side = TorchStep(args, recipe, seqs)
        losses, times = [], []
        for pairs in run["step_pairs"]:
            t0 = time.perf_counter()
            losses.append(side.step(pairs))
            times.append(time.perf_counter() - t0)
        pt_times.append(statistics.mean(times))
        if args.evaluation:
            rm_rates.append(run["evaluation_tokens_per_second"])
            pt_rates.append(side.evaluation_rate(recipe["config"]["train"]["eval_batch"]))
        pt_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        agreement = [abs(a - b) / abs(b) for a, b in zip(losses, rm_losses)]
        print(f"repeat {rep + 1}: rmflow {run['seconds_per_step']:.3f} s/step, PyTorch {pt_times[-1]:.3f} s/step; "
              f"losses rmflow {['%.6g' % x for x in rm_losses]} PyTorch {['%.6g' % x for x in losses]}", file=sys.stderr)
        del side
    import torch
    import transformers
    rm, pt = statistics.median(rm_times), statistics.median(pt_times)
    print(f"model {args.model}, reward {args.reward}, {len(run['step_pairs'])} steps of ≤ "
          f"{recipe['config']['train']['pairs_per_step']} pairs, {args.threads} threads, {args.repeats} alternated repeats")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'':8} {'s/step (median)':>16} {'peak RSS':>10}")
    print(f"{'rmflow':8} {rm:>16.3f} {max(rm_peaks) / 2**30:>8.2f} GB")
    print(f"{'PyTorch':8} {pt:>16.3f} {pt_peak / 2**30:>8.2f} GB")
    print(f"ratio rmflow / PyTorch: {rm / pt:.2f}")
    print(f"per-step loss agreement (relative): max {max(agreement):.2e}")
    if args.evaluation:
        rm_rate, pt_rate = statistics.median(rm_rates), statistics.median(pt_rates)
        tokens = sum(len(s["ids"]) for s in seqs)
        print(f"evaluation, {len(seqs)} sequences ({tokens} tokens): rmflow {rm_rate:.0f} tokens/s, "
              f"PyTorch {pt_rate:.0f} tokens/s, ratio rmflow / PyTorch (time) {pt_rate / rm_rate:.2f}")


if __name__ == "__main__":
    main()
