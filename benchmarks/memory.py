"""Peak memory of one rlft training setup per setting (issue: memory savers), each in its own process.

    python benchmarks/memory.py [--steps 2] [--hidden 512] [--layers 8] [--new-tokens 128] [--out DIR]

Builds a Llama-shaped model from a config (no download), then for each setting runs `steps` RL steps
(8 prompts x 4 samples) in a fresh process and reports the peak resident memory (VmHWM) of that process,
and on CUDA the peak allocated GPU memory. Writes memory.json and memory.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "fp32, micro-batch 32": [],
    "fp32, micro-batch 4": ["optim.micro_batch_size=4"],
    "bf16 weights": ["model.dtype=bfloat16"],
    "gradient checkpointing": ["model.gradient_checkpointing=true"],
    "LoRA r=8 (+ KL via adapters off)": ["model.lora.r=8", "algo.kl_coef=0.05"],
    "full + KL (frozen reference copy)": ["algo.kl_coef=0.05"],
    "LoRA r=8 + checkpointing + micro 4": ["model.lora.r=8", "model.gradient_checkpointing=true",
                                           "optim.micro_batch_size=4"],
}

CHILD = r'''
import json, resource, sys, torch
from rlft.config import Config
from rlft.train import train
cfg = Config.load(None, json.loads(sys.argv[1]))
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
train(cfg, overwrite=True)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss_mb": hwm / 1024,
                  "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}))
'''


def build(folder: Path, hidden: int, layers: int) -> tuple[str, str]:
    import torch

    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm

    tok = byte_tokenizer()
    model = tiny_causal_lm(tok, hidden=hidden, layers=layers, heads=max(1, hidden // 64), max_positions=512)
    n = sum(p.numel() for p in model.parameters())
    path = save_tiny(folder / "model", model, tok)
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Item {i}: write about the number {i}.", "reference": str(i)}) + "\n"
                            for i in range(64)))
    del model, torch
    return path, str(data), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, data, n_params = build(Path(tmp), args.hidden, args.layers)
        rows = []
        for name, extra in SETTINGS.items():
            over = [f"model.path={model}", f"data.train={data}", f"train.out={tmp}/run", f"train.steps={args.steps}",
                    "rollout.batch_prompts=8", "rollout.num_generations=4", f"rollout.max_new_tokens={args.new_tokens}",
                    "optim.micro_batch_size=32", "log.console=false", "rewards=[bleu]", *extra]
            if "model.lora.r=8" in extra:
                over.append("optim.lr=1e-4")
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(over)], capture_output=True, text=True)
            if proc.returncode:
                rows.append({"setting": name, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append({"setting": name, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    import torch
    import transformers

    meta = {"params": n_params, "hidden": args.hidden, "layers": args.layers, "new_tokens": args.new_tokens,
            "steps": args.steps, "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "command": " ".join(sys.argv)}
    (out / "memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    base = rows[0].get("peak_rss_mb")
    lines = [f"Peak memory, {n_params / 1e6:.1f}M-parameter Llama, 8 prompts x 4 samples, {args.new_tokens} new "
             "tokens, "
             f"{args.steps} steps (torch {torch.__version__}, transformers {transformers.__version__})", "",
             "| setting | peak RSS (MB) | vs first row | peak CUDA (MB) |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | error: {r['error']} | | |")
            continue
        cuda = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base:.2f}x | {cuda} |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
