"""rollout.engine=vllm on one GPU: throughput against rlft's sampler, the log-prob mismatch the TIS corrects,
and whether the policy's weights reach vLLM after an update. Needs a CUDA GPU and `pip install 'rlft[vllm]'`.

    python benchmarks/vllm_gpu.py              # a ~0.5B Qwen2-shaped model in bf16, ~5 min on an H100 / H200
    python benchmarks/vllm_gpu.py --quick      # smaller batch, fewer steps, ~3 min
    python benchmarks/vllm_gpu.py --lora       # also a LoRA run (the merged weights are what vLLM gets)

The model is built from a config (Qwen2.5-0.5B's shape: 24 layers, hidden 896, 14 heads, 2 KV heads) with
random weights and rlft's byte-level tokenizer, so nothing is downloaded; its vocabulary is the tokenizer's
(~260 tokens), not Qwen's 151k, so the output head is cheap. Each part runs in its own process (one vLLM
engine per process, as in a run):

1. sampling: the same prompts, lengths and settings (temperature 1, no top-k / top-p, EOS ignored) through
   rlft's own sampler (`rlft.backends.Causal.sample`) and through the vLLM backend; median sampled tokens per second;
2. mismatch: the trainer's log-probs of vLLM's samples against vLLM's own (what `rollout.tis_cap` reweights),
   and the same for rlft's sampler;
3. weight sync: one `update` moves the policy; vLLM's greedy completions are scored by the trainer before
   and after `load_weights` (stale weights: a large log-prob gap; pushed weights: the bf16 noise of part 2);
4. training: a few steps of `rlft.train` with rollout.engine rlft and vllm (and LoRA with --lora); per-step
   seconds, sampling seconds and the tis/* metrics (a weight that failed to reach vLLM shows as a growing
   tis/logp_abs_diff).

A Markdown report is printed; with $OUT set, vllm_gpu.json and vllm_gpu.md are written there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))

from benchmarks.vs_trl import prompts, reward  # noqa: E402 -- needs the path above; these need no TRL

QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True,
             "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6}
SMALL = {**QWEN2_05B, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2}


def build_model(folder: Path, shape: dict, seed: int = 0) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlft.tiny import byte_tokenizer, save_tiny

    tok = byte_tokenizer()
    cfg = AutoConfig.for_model("qwen2", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    return save_tiny(folder / "model", model, tok)


def config(model_dir: str, data: str, out: str, **over):
    from rlft.config import Config

    base = {"model.path": model_dir, "model.dtype": "bfloat16", "model.device": "cuda", "data.train": data,
            "train.out": out, "data.max_prompt_tokens": 64, "log.console": False, "rollout.temperature": 1.0}
    return Config.load(None, [f"{k}={v}" for k, v in {**base, **over}.items()])


def _timed(fn, repeats: int):
    import torch

    fn()  # warm-up (compilation, CUDA graphs, the lean cache)
    rates, last = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        last = fn()
        torch.cuda.synchronize()
        rates.append(int(last.completion_mask.sum()) / (time.perf_counter() - t0))
    return statistics.median(rates), last


def _gap(trainer, sampler, mask, cap: float) -> dict:
    """Per-token log-prob gap statistics over the completion tokens, and the TIS weights they imply."""
    m = mask.bool()
    d = (trainer - sampler)[m].float()
    raw = d.exp()
    return {"logp_abs_diff_mean": float(d.abs().mean()), "logp_abs_diff_p99": float(d.abs().quantile(0.99)),
            "logp_abs_diff_max": float(d.abs().max()), "tis_weight_mean": float(raw.clamp(max=cap).mean()),
            "tis_clipped_frac": float((raw > cap).float().mean()), "tokens": int(m.sum())}


def part_engine(model_dir: str, batch: int, group: int, new_tokens: int, repeats: int) -> dict:
    """Parts 1-3 in one process: sampling throughput, log-prob mismatch, weight sync."""
    import torch

    from rlft import backends
    from rlft.distributed import Dist
    from rlft.policy import encode_prompt, left_pad
    from rlft.sampling import SamplingParams
    from rlft.step import StepBatch
    from rlft.update import Optim, logprobs_of, update

    data = str(Path(model_dir).parent / "train.jsonl")
    cfg = config(model_dir, data, str(Path(model_dir).parent / "run-engine"), **{
        "rollout.engine": "vllm", "rollout.max_new_tokens": new_tokens, "rollout.num_generations": group,
        "rollout.batch_prompts": batch, "optim.micro_batch_size": 32, "optim.lr": 1e-3})
    model, tok = backends.load_policy(cfg.model)
    texts = [p for p in prompts(batch) for _ in range(group)]
    ids, mask = left_pad([encode_prompt(tok, x, "off") for x in texts], tok.pad_token_id, "cuda")
    engine = backends.build(cfg, model, tok)           # the VLLM backend
    own = backends.plain(model, tok)                     # rlft's own sampler on the same model
    eos = list(own.eos_ids)
    engine.eos_ids = own.eos_ids = []                    # sample through EOS: equal lengths
    params = SamplingParams(new_tokens, 1.0)
    gen = torch.Generator("cuda").manual_seed(0)
    model.eval()
    rlft_tps, rlft_ro = _timed(lambda: own.sample(ids, mask, params, generator=gen), repeats)
    vllm_tps, vllm_ro = _timed(lambda: engine.sample(ids, mask, params), repeats)
    gap_vllm = _gap(logprobs_of(own, vllm_ro, cfg), vllm_ro.logp, vllm_ro.completion_mask, cfg.rollout.tis_cap)
    gap_rlft = _gap(logprobs_of(own, rlft_ro, cfg), rlft_ro.logp, rlft_ro.completion_mask, cfg.rollout.tis_cap)

    # 3. one real update with TIS on vLLM's samples, then vLLM's greedy completions scored by the trainer
    g_ids, g_mask = ids[::group][:32], mask[::group][:32]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    adv = (torch.arange(vllm_ro.logp.shape[0], device="cuda") % 2 * 2 - 1.0)[:, None] * vllm_ro.completion_mask
    batch = StepBatch([], vllm_ro, torch.zeros_like(adv), torch.ones(len(adv), dtype=torch.bool, device="cuda"), {},
                      kl_rewards=torch.zeros_like(adv), loss_mask=vllm_ro.completion_mask, advantages=adv)
    upd = update(engine, Optim(opt, sched, params), batch, cfg, Dist())
    engine.eos_ids, own.eos_ids = list(eos), list(eos)  # greedy completions end at EOS

    def greedy_gap():
        ro = engine.sample(g_ids, g_mask, SamplingParams(32, 0.0))
        model.eval()
        trainer = logprobs_of(own, ro, cfg)
        mine = own.sample(g_ids, g_mask, SamplingParams(32, 0.0))
        same = [a[:m.sum()].tolist() == b[:n.sum()].tolist() for a, m, b, n in
                zip(ro.completion_ids, ro.completion_mask, mine.completion_ids, mine.completion_mask)]
        return {**_gap(trainer, ro.logp, ro.completion_mask, cfg.rollout.tis_cap),
                "greedy_same_as_trainer": sum(same) / len(same)}

    stale = greedy_gap()
    t0 = time.perf_counter()
    engine.after_update()
    torch.cuda.synchronize()
    sync_s = time.perf_counter() - t0
    synced = greedy_gap()
    return {"tokens_per_s": {"rlft": rlft_tps, "vllm": vllm_tps, "ratio": vllm_tps / rlft_tps},
            "rows": len(texts), "new_tokens": new_tokens, "gap": {"vllm": gap_vllm, "rlft": gap_rlft},
            "update": {k: v for k, v in upd.items() if k.startswith(("tis/", "grad_norm", "loss/pg"))},
            "sync": {"stale": stale, "synced": synced, "load_weights_s": sync_s,
                     "weights_reach_vllm": synced["logp_abs_diff_mean"] < 0.5 * stale["logp_abs_diff_mean"]},
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30}


def part_train(model_dir: str, engine: str, steps: int, batch: int, group: int, new_tokens: int, lora: bool) -> dict:
    """Part 4: a short real run; its per-step metrics."""
    from rlft.train import train

    root = Path(model_dir).parent
    name = f"run-{engine}{'-lora' if lora else ''}"
    over = {"rollout.engine": engine, "train.steps": steps, "rollout.batch_prompts": batch,
            "rollout.num_generations": group, "rollout.max_new_tokens": new_tokens, "optim.lr": 1e-5,
            "optim.micro_batch_size": 32, "log.samples_every": 0}
    if lora:
        over.update({"model.lora.r": 16, "model.lora.alpha": 32, "optim.lr": 1e-4})
    out = train(config(model_dir, str(root / "train.jsonl"), str(root / name), **over), rewards=[reward])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "reward/mean", "perf/step_seconds", "perf/sample_seconds", "perf/update_seconds",
            "perf/tokens_per_second", "tis/weight_mean", "tis/clipped_frac", "tis/logp_abs_diff", "grad_norm")
    return {"engine": engine, "lora": lora, "steps": [{k: r[k] for k in keep if k in r} for r in rows
                                                      if "loss/pg" in r]}


def run_part(args: list[str]) -> dict:
    """One part in its own process (one vLLM engine per process, as in a run)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res = f.name
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args, "--result", res], check=False,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        return {"error": proc.stderr[-4000:]}
    out = json.loads(Path(res).read_text())
    os.unlink(res)
    return out


def report(res: dict) -> str:
    md = [f"vLLM rollouts, {res['model']} (bf16); {res['machine']}", ""]
    e = res["engine"]
    if "error" in e:
        md += ["parts 1-3 failed:", "```", e["error"], "```"]
    else:
        t = e["tokens_per_s"]
        head = (f"Sampling, {e['rows']} rows x {e['new_tokens']} new tokens, temperature 1, EOS ignored "
                f"(median of {res['repeats']}):")
        md += [head, "", "| engine | tokens/s | vs rlft |", "|---|---:|---:|",
               f"| rlft sampler | {t['rlft']:.0f} | 1.00x |",
               f"| vLLM | {t['vllm']:.0f} | **{t['ratio']:.2f}x** |", ""]
        md += ["Trainer log-probs vs the sampler's own, over the sampled tokens (TIS cap 2):", "",
               "| sampler | mean abs diff | p99 | max | TIS weight mean | clipped frac |",
               "|---|---:|---:|---:|---:|---:|"]
        for k in ("rlft", "vllm"):
            g = e["gap"][k]
            md.append(f"| {k} | {g['logp_abs_diff_mean']:.4f} | {g['logp_abs_diff_p99']:.4f} | "
                      f"{g['logp_abs_diff_max']:.3f} | {g['tis_weight_mean']:.4f} | {g['tis_clipped_frac']:.4f} |")
        s = e["sync"]
        head = (f"Weight sync after one update (load_weights {s['load_weights_s']:.2f} s): weights reach vLLM: "
                f"**{s['weights_reach_vllm']}**")
        md += ["", head, "", "| vLLM weights | trainer vs vLLM logp, mean abs diff | greedy equal to the trainer's |",
               "|---|---:|---:|"]
        for k in ("stale", "synced"):
            md.append(f"| {k} | {s[k]['logp_abs_diff_mean']:.4f} | {s[k]['greedy_same_as_trainer']:.2f} |")
        md += ["", f"update on vLLM's samples: {json.dumps(e['update'])}; peak CUDA {e['peak_cuda_gb']:.1f} GB"]
    tis_keys = ("tis/weight_mean", "tis/clipped_frac", "tis/logp_abs_diff")
    md += ["", "Training steps (rlft.train):", "",
           "| run | step | step s | sample s | update s | tokens/s | " + " | ".join(tis_keys) + " |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in res["train"]:
        if "error" in run:
            md.append(f"| failed | | | | | | | | {run['error'][-300:]!r} |")
            continue
        name = run["engine"] + (" + LoRA" if run["lora"] else "")
        for r in run["steps"]:
            tis = " | ".join(f"{r[k]:.4f}" if k in r else "-" for k in tis_keys)
            md.append(f"| {name} | {r['step']} | {r['perf/step_seconds']:.2f} | {r['perf/sample_seconds']:.2f} | "
                      f"{r['perf/update_seconds']:.2f} | {r['perf/tokens_per_second']:.0f} | {tis} |")
    return "\n".join(md) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 4-layer model, fewer rows and steps")
    ap.add_argument("--lora", action="store_true", help="also train with LoRA r=16 on vLLM rollouts")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 4, quick 2)")
    ap.add_argument("--part", choices=["engine", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="vllm", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batch, group, new_tokens, repeats = (16, 4, 64, 2) if args.quick else (64, 8, 256, 3)
    steps = args.steps or (2 if args.quick else 4)
    if args.part:
        res = part_engine(args.model_dir, batch, group, new_tokens, repeats) if args.part == "engine" else \
            part_train(args.model_dir, args.engine, steps, batch // 4, group, new_tokens // 2, args.lora)
        Path(args.result).write_text(json.dumps(res))
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("benchmarks/vllm_gpu.py needs a CUDA GPU (and pip install 'rlft[vllm]')")
    import transformers

    try:
        import vllm
    except ImportError:
        sys.exit("benchmarks/vllm_gpu.py needs vLLM: pip install 'rlft[vllm]'")
    machine = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
               f"vLLM {vllm.__version__}")
    flags = [*(["--quick"] if args.quick else []), *(["--steps", str(args.steps)] if args.steps else [])]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), SMALL if args.quick else QWEN2_05B)
        lines = [json.dumps({"prompt": p}) for p in prompts(256)]
        (Path(tmp) / "train.jsonl").write_text("\n".join(lines) + "\n")
        res = {"model": "Qwen2-shaped 4 layers x 256" if args.quick else "Qwen2.5-0.5B-shaped",
               "machine": machine, "repeats": repeats,
               "engine": run_part(["--part", "engine", "--model-dir", model_dir, *flags])}
        runs = [("rlft", False), ("vllm", False)] + ([("vllm", True)] if args.lora else [])
        res["train"] = [run_part(["--part", "train", "--model-dir", model_dir, "--engine", e, *flags,
                                  *(["--lora"] if lora else [])]) for e, lora in runs]
    md = report(res)
    print(md)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "vllm_gpu.json").write_text(json.dumps(res, indent=1))
        (out / "vllm_gpu.md").write_text(md)


if __name__ == "__main__":
    main()
