#!/usr/bin/env python3
"""Compares rmflow's transformer forwards with Hugging Face `transformers` (the reference
implementation) on the same checkpoints and token ids.

Usage: reference_forward.py MODEL_DIR RMFLOW_JSON [MODEL_DIR RMFLOW_JSON ...] [--device cpu|cuda]

RMFLOW_JSON is what `rmflow lm-forward --model MODEL_DIR` wrote: the probe sentences' token ids,
their read positions and the final hidden states under rmflow's reference and differentiable
forwards. For each model this loads MODEL_DIR with `transformers.AutoModel` (float32), runs each
sequence alone (no padding), takes `last_hidden_state` at the read position, and prints one JSON
object per model: the largest absolute difference to each of rmflow's forwards and the largest
|h| (the scale). Needs torch and transformers; nothing is downloaded (local folders only).
"""
import json
import sys


def main(argv):
    device = "cpu"
    if "--device" in argv:
        i = argv.index("--device")
        device = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    import torch
    import transformers

    results = []
    for model_dir, record_path in zip(argv[0::2], argv[1::2]):
        with open(record_path) as f:
            record = json.load(f)
        model = transformers.AutoModel.from_pretrained(
            model_dir, torch_dtype=torch.float32, local_files_only=True
        ).to(device)
        model.eval()
        ours = {k: torch.tensor(v, dtype=torch.float64) for k, v in record["hidden"].items()}
        rows = []
        with torch.no_grad():
            for ids, pos in zip(record["token_ids"], record["positions"]):
                x = torch.tensor([ids], dtype=torch.long, device=device)
                out = model(input_ids=x, attention_mask=torch.ones_like(x))
                rows.append(out.last_hidden_state[0, pos].double().cpu())
        theirs = torch.stack(rows)
        results.append(
            {
                "model": model_dir,
                "model_type": model.config.model_type,
                "device": device,
                "sequences": len(rows),
                "max_abs_h": float(theirs.abs().max()),
                "max_abs_diff": {k: float((v - theirs).abs().max()) for k, v in ours.items()},
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
