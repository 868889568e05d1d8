"""rlft against TRL's GRPOTrainer on one CUDA GPU, and rlft's sampler against the memory-bound floor (issue 14).

    python benchmarks/gpu.py            # the two jobs below, rlft and TRL alternating (~8 min on an H200, estimated)
    python benchmarks/gpu.py --tiny     # a tiny model, 2 steps, on whatever device there is (CPU in CI)

The jobs: a randomly initialised Qwen2 of 0.39B parameters (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, tied embeddings, vocabulary 32,000), bfloat16; 16 prompts x 8 samples x 256 new tokens; GRPO
(group scaling, token-mean loss, beta 0, one iteration, lr 1e-6), micro-batch 32, no gradient checkpointing, 6
steps. ``short``: prompts of 8-30 tokens; ``long``: ~170-220 tokens (benchmarks/vs_trl.py `prompts`). The
tokenizer is rlft's byte-level one grown to 32,000 entries with plain added tokens, so every id the random model
samples decodes; both sides load the same saved model and tokenizer and use vs_trl's reward, settings and
harness (`vs_trl.rlft_config`, `vs_trl.trl_config`, each side in its own process, A B then B A).

Reported per job and side: seconds per step (median interval between reward calls, the first step excluded, and
the whole ``train()`` call), sampled tokens per second, peak GPU memory (``torch.cuda.max_memory_allocated``; on a
CPU, peak RSS), and for rlft each step's phases (perf/*_seconds from its metrics.jsonl). A third process per job
times rlft's sampler alone: milliseconds per decode step with ``rollout.decode`` graph and eager, and
`transformers.generate`, as the slope between two lengths (prefill and per-rollout costs cancel), against the
memory-bound floor: (weight bytes + the mean KV cache bytes a step reads) / a measured device-copy bandwidth; and
whether greedy decoding still equals `generate` token for token.

Writes gpu.json and gpu.md to --out (default: $OUT when set, else benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))

from benchmarks import vs_trl  # noqa: E402 -- needs the path above

QWEN2_039B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "tie_word_embeddings": True, "rope_theta": 1_000_000.0,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 1024}
TINY = {**QWEN2_039B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


@dataclass(frozen=True)
class GpuJob:
    name: str = "qwen2-0.39B short"
    shape: dict = field(default_factory=lambda: dict(QWEN2_039B))
    vocab: int = 32_000
    prompt: str = "short"
    batch_prompts: int = 16
    num_generations: int = 8
    max_new_tokens: int = 256
    micro_batch: int = 32
    lr: float = 1e-6
    steps: int = 6
    seed: int = 0

    def vs_trl_job(self) -> vs_trl.Job:
        """The same job in benchmarks/vs_trl.py's terms (its configs for both sides)."""
        return vs_trl.Job(model="gpu", estimator="grpo", max_new_tokens=self.max_new_tokens, steps=self.steps,
                          batch_prompts=self.batch_prompts, num_generations=self.num_generations,
                          micro_batch=self.micro_batch, lr=self.lr, seed=self.seed, prompt=self.prompt)


def jobs(tiny: bool) -> list[GpuJob]:
    if tiny:
        return [GpuJob("tiny qwen2 short", dict(TINY), vocab=512, batch_prompts=2, num_generations=4,
                       max_new_tokens=16, micro_batch=4, lr=1e-3, steps=2)]
    return [GpuJob(), GpuJob("qwen2-0.39B long", prompt="long")]


def device_and_dtype():
    import torch

    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def build_model(job: GpuJob, folder: Path) -> str:
    """The job's model from its config (seeded) and a tokenizer of ``job.vocab`` entries, saved once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlft.tiny import byte_tokenizer, save_tiny

    tok = byte_tokenizer()
    tok.add_tokens([f"<x{i}>" for i in range(job.vocab - len(tok))])
    cfg = AutoConfig.for_model("qwen2", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **job.shape)
    torch.manual_seed(job.seed)
    model = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, device_and_dtype()[1]))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return save_tiny(folder / job.name.replace(" ", "-"), model, tok)


# --------------------------------------------------------------------------------------------- children

def rlft_config(job: GpuJob, model_dir: str, data: str, out: str):
    device, dtype = device_and_dtype()
    cfg = vs_trl.rlft_config(job.vs_trl_job(), model_dir, data, out)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=device, dtype=dtype))


def trl_config(job: GpuJob, out: str):
    """vs_trl's TRL settings; on a GPU with ``use_cpu=False, bf16=True`` (they must be set when the config is made:
    it fixes the process's device then)."""
    import trl

    if device_and_dtype()[0] != "cuda":
        return vs_trl.trl_config(job.vs_trl_job(), out)

    class OnGpu(trl.GRPOConfig):
        def __init__(self, **kw):
            super().__init__(**{**kw, "use_cpu": False, "bf16": True})

    real, trl.GRPOConfig = trl.GRPOConfig, OnGpu
    try:
        return vs_trl.trl_config(job.vs_trl_job(), out)
    finally:
        trl.GRPOConfig = real


def peak_memory_mb() -> float:
    """Peak GPU memory this process allocated, or its peak RSS on a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return vs_trl.peak_rss_mb()


def train_child(side: str, job: GpuJob, model_dir: str) -> dict:
    """One training run of ``side`` (rlft or trl): the reward's call times, rlft's per-step phases, peak memory."""
    import torch

    rec = vs_trl.Recorder(job.steps)
    phases = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if side == "rlft":
            from rlft.train import train

            data = Path(tmp) / "prompts.jsonl"
            data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in vs_trl.prompts(kind=job.prompt)))
            out = train(rlft_config(job, model_dir, str(data), str(Path(tmp) / "run")), rewards=[rec],
                        overwrite=True)
            wall = time.perf_counter() - t0
            for line in (out / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                phases.append({k: v for k, v in m.items() if k.startswith("perf/")})
        else:
            import datasets
            import trl
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            dtype = getattr(torch, device_and_dtype()[1])
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
            ds = datasets.Dataset.from_list([{"prompt": p} for p in vs_trl.prompts(kind=job.prompt)])
            trl.GRPOTrainer(model=model, reward_funcs=[rec], args=trl_config(job, tmp), train_dataset=ds,
                            processing_class=tok).train()
            wall = time.perf_counter() - t0
    return {"calls": rec.calls, "wall_s": wall, "peak_mb": peak_memory_mb(), "phases": phases,
            "peak_rss_mb": vs_trl.peak_rss_mb()}


def copy_bandwidth(device: str) -> float:
    """Bytes per second a device-to-device copy of 1 GiB moves (read + write), best of 5; CPU: 64 MiB."""
    import torch

    n = 2**30 if device == "cuda" else 2**26
    a, b = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def sampler_child(job: GpuJob, model_dir: str) -> dict:
    """rlft's sampler alone on the job's batch: ms per decode step (graph, eager, generate), the floor, greedy vs
    `generate`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.backends import Causal
    from rlft.policy import encode_prompt, left_pad, prepare_tokenizer

    device, dtype = device_and_dtype()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prepare_tokenizer(tok)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    texts = [p for p in vs_trl.prompts(job.batch_prompts, job.prompt) for _ in range(job.num_generations)]
    ids, mask = left_pad([encode_prompt(tok, t, "off") for t in texts], tok.pad_token_id, torch.device(device))
    res = {"rows": ids.shape[0], "prompt_tokens": ids.shape[1], "new_tokens": job.max_new_tokens}
    for decode in ("graph", "eager"):
        backend = Causal(model, tok, [], decode=decode)  # no EOS: every row decodes every step
        res[f"ms_per_step_{decode}"], res[f"ms_per_rollout_{decode}"] = _per_step(
            lambda n, b=backend: b.sample(ids, mask, _params(n), generator=torch.Generator(device).manual_seed(0)),
            job.max_new_tokens, device)
    res["ms_per_step_generate"], res["ms_per_rollout_generate"] = _per_step(
        lambda n: _generate(model, tok, ids, mask, n), job.max_new_tokens, device)
    res.update(_floor(model, job, ids.shape[0], ids.shape[1], device))
    res["greedy"] = _greedy_vs_generate(model, tok, ids[:: job.num_generations], mask[:: job.num_generations],
                                        min(64, job.max_new_tokens))
    res["peak_mb"] = peak_memory_mb()
    return res


def _params(n: int):
    from rlft.sampling import SamplingParams

    return SamplingParams(n, 1.0)


def _generate(model, tok, ids, mask, n: int):
    import torch

    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id, eos_token_id=None)


def _per_step(run, tokens: int, device: str, repeats: int = 2) -> tuple[float, float]:
    """(ms per decode step: the slope between rollouts of ``tokens`` and ``tokens // 2`` new tokens, which cancels
    the prefill and per-rollout costs; ms per whole rollout of ``tokens``). Best of ``repeats`` after a warm-up."""
    def timed(n):
        _sync(device)
        t0 = time.perf_counter()
        run(n)
        _sync(device)
        return time.perf_counter() - t0

    half = max(1, tokens // 2)
    timed(tokens)  # warm-up: kernels loaded, allocator grown
    long = min(timed(tokens) for _ in range(repeats))
    short = min(timed(half) for _ in range(repeats))
    return 1000 * (long - short) / max(1, tokens - half), 1000 * long


def _floor(model, job: GpuJob, rows: int, prompt: int, device: str) -> dict:
    """The memory-bound floor of one decode step: the weights and the KV cache of the mean step read once."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    elem = next(model.parameters()).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * elem * rows
    kv = per_token * (prompt + job.max_new_tokens / 2)
    bw = copy_bandwidth(device)
    return {"weight_bytes": weights, "kv_bytes_mean_step": kv, "copy_bandwidth_Bps": bw,
            "floor_ms_per_step": 1000 * (weights + kv) / bw}


def _greedy_vs_generate(model, tok, ids, mask, n: int) -> dict:
    """rlft's greedy decoding (rollout.decode graph) against `generate`: rows equal token for token, and where the
    first difference is in the others."""
    import torch

    from rlft.backends import Causal
    from rlft.sampling import SamplingParams

    r = Causal(model, tok, [], decode="graph").sample(ids, mask, SamplingParams(n, 0.0))
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)[:, ids.shape[1]:]
    same = (r.completion_ids == ref)
    first = [int(row.logical_not().nonzero()[0]) if not row.all() else None for row in same]
    return {"rows": len(first), "rows_equal": sum(f is None for f in first), "first_difference": first}


# ------------------------------------------------------------------------------------------- the harness

def run_child(kind: str, job: GpuJob, model_dir: str, timeout: float) -> dict:
    """``kind`` (rlft, trl, sampler) in a fresh process; its JSON result."""
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--job", json.dumps(asdict(job)),
           "--model-dir", model_dir, "--result", res_path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {job.name} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(Path(res_path).read_text())
    os.unlink(res_path)
    return res


def summarize(res: dict, job: GpuJob) -> dict:
    """Seconds per step (the median interval between reward calls, the first -- warm-up -- excluded when there
    are others), the whole run, sampled tokens per second, peak memory."""
    calls = res["calls"]
    gaps = [b["t"] - a["t"] for a, b in zip(calls, calls[1:])]
    s_step = statistics.median(gaps[1:] or gaps)
    tokens = statistics.median(c["tokens"] for c in calls)
    return {"s_per_step": s_step, "wall_s": res["wall_s"], "tokens_per_s": tokens / s_step,
            "peak_mb": res["peak_mb"], "final_reward": calls[-1]["reward"], "step_s": gaps,
            "phases": res.get("phases", [])}


def run_job(job: GpuJob, folder: Path, pairs: int, sides: list[str], timeout: float) -> dict:
    model_dir = build_model(job, folder)
    runs: dict[str, list] = {s: [] for s in sides}
    for k in range(pairs):
        for side in (sides if k % 2 == 0 else sides[::-1]):
            r = summarize(run_child(side, job, model_dir, timeout), job)
            runs[side].append(r)
            print(f"  {job.name:<22} {side:<4}: {r['s_per_step']:.2f} s/step, whole run {r['wall_s']:.1f} s, "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
    row = {"job": asdict(job), "runs": runs, "sampler": run_child("sampler", job, model_dir, timeout)}
    for key in ("s_per_step", "wall_s", "tokens_per_s", "peak_mb"):
        row[key] = {s: statistics.median(r[key] for r in runs[s]) for s in sides}
    if "trl" in sides:
        row["speedup"] = {"s_per_step": row["s_per_step"]["trl"] / row["s_per_step"]["rlft"],
                          "wall": row["wall_s"]["trl"] / row["wall_s"]["rlft"],
                          "memory_ratio": row["peak_mb"]["rlft"] / row["peak_mb"]["trl"]}
    return row


def machine() -> dict:
    import torch

    info = vs_trl.machine()
    info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    info["cuda"] = torch.version.cuda
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model, 2 steps, any device (checks the script)")
    ap.add_argument("--pairs", type=int, default=1, help="A B pairs per job (default 1)")
    ap.add_argument("--only", default="", help="run only jobs whose name contains this text")
    ap.add_argument("--no-trl", action="store_true", help="rlft only")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"), help="folder for gpu.{json,md}")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    ap.add_argument("--child", choices=["rlft", "trl", "sampler"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        job = GpuJob(**json.loads(args.job))
        res = sampler_child(job, args.model_dir) if args.child == "sampler" else \
            train_child(args.child, job, args.model_dir)
        Path(args.result).write_text(json.dumps(res))
        return
    info = machine()
    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{info['device']}; torch {info['torch']} (CUDA {info['cuda']}), transformers {info['transformers']}, trl "
          f"{info['trl']}, rlft {info['rlft']} ({info['rlft_commit']})\ncommand: {command}", flush=True)
    sides = ["rlft"] if args.no_trl or info["trl"] is None else ["rlft", "trl"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_job(j, Path(tmp), args.pairs, sides, args.timeout) for j in jobs(args.tiny)
                if args.only in j.name]
    report = {"machine": info, "command": command, "seconds": round(time.time() - t0), "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"{m['device']}; torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}, trl {m['trl']}, "
             f"rlft {m['rlft']} ({m['rlft_commit']}). Command: `{report['command']}` ({report['seconds']} s).", "",
             "| job | side | s / step (median) | whole run s | sampled tokens / s | peak memory MB |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        for side in r["s_per_step"]:
            lines.append(f"| {r['job']['name']} | {side} | {r['s_per_step'][side]:.2f} | {r['wall_s'][side]:.1f} | "
                         f"{r['tokens_per_s'][side]:.0f} | {r['peak_mb'][side]:.0f} |")
        if "speedup" in r:
            sp = r["speedup"]
            lines.append(f"| {r['job']['name']} | **rlft vs TRL** | **{sp['s_per_step']:.2f}x** steps/s | "
                         f"**{sp['wall']:.2f}x** | | memory {sp['memory_ratio']:.2f}x |")
    lines += ["", "rlft's sampler alone (no EOS; ms per decode step = the slope between two lengths; floor = "
              "(weights + mean KV cache) / device-copy bandwidth); greedy (graph) vs `generate`:", "",
              "| job | rows x new tokens | graph ms/step | eager ms/step | generate ms/step | floor ms/step | "
              "graph / floor | greedy rows equal generate |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        s = r["sampler"]
        g = s["greedy"]
        lines.append(f"| {r['job']['name']} | {s['rows']} x {s['new_tokens']} | {s['ms_per_step_graph']:.2f} | "
                     f"{s['ms_per_step_eager']:.2f} | {s['ms_per_step_generate']:.2f} | {s['floor_ms_per_step']:.3f} | "
                     f"{s['ms_per_step_graph'] / s['floor_ms_per_step']:.0f}x | {g['rows_equal']} / {g['rows']} |")
    lines += ["", "rlft's phases per step (seconds, from metrics.jsonl, first run):", "",
              "| job | step | sample | reward | reference | advantage | update | optimizer | step |",
              "|---|---|---|---|---|---|---|---|---|"]
    keys = ("sample", "reward", "reference", "advantage", "update", "optimizer", "step")
    for r in report["results"]:
        for i, ph in enumerate(r["runs"]["rlft"][0]["phases"], 1):
            lines.append(f"| {r['job']['name']} | {i} | " + " | ".join(
                f"{ph.get(f'perf/{k}_seconds', float('nan')):.2f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
