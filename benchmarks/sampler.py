"""rlft's sampler against `model.generate` at the same batch, prompts, lengths and sampling settings.

Each measurement runs in its own process (so peak memory is that engine's alone), engines alternate
A B A B, and the report gives medians of sampled tokens per second and peak resident memory (the child's own
VmHWM: `benchmarks.vs_trl.peak_rss_mb`), and the ratio rlft / generate.

    python benchmarks/sampler.py            # llama-0.4M and gpt2-3M, ~5 min on 2 cores
    python benchmarks/sampler.py --quick    # ~1 min
    python benchmarks/sampler.py --models llama-0.4M,gpt2-3M,gpt2-19M   # ~15 min

Both engines sample at temperature 1 with no top-k / top-p, stop only at max_new_tokens (EOS is not a token
the benchmark models favour), and run under torch.inference_mode.
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
sys.path.append(str(HERE.parent))  # after PYTHONPATH: --rlft-src must win for `rlft`

from benchmarks.vs_trl import MODELS, build_model, machine, peak_rss_mb, prompts  # noqa: E402 -- needs the path


def _sampler(model, tok, prepare_tokenizer):
    """rlft's sampler as ``sample(ids, mask, max_new_tokens, generator, eos_ids)``, in this checkout's layout (a
    backend, rlft/backends/) or an older one's (``rlft.rollout.sample``, for --rlft-src)."""
    try:
        from rlft import backends
        from rlft.sampling import SamplingParams
    except ImportError:  # an older checkout
        from rlft.rollout import sample as old_sample

        prepare_tokenizer(tok, model)
        return lambda ids, mask, n, gen, eos: old_sample(model, tok, ids, mask, max_new_tokens=n, temperature=1.0,
                                                         generator=gen, eos_ids=eos)
    prepare_tokenizer(tok)
    backend = backends.plain(model, tok)

    def sample(ids, mask, n, gen, eos):
        backend.eos_ids = eos
        return backend.sample(ids, mask, SamplingParams(n, 1.0), generator=gen)

    return sample


def child(engine: str, model_dir: str, batch: int, new_tokens: int, repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.policy import encode_prompt, left_pad, prepare_tokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sample = _sampler(model, tok, prepare_tokenizer)
    texts = [p for p in prompts(batch // 4) for _ in range(4)]
    ids, mask = left_pad([encode_prompt(tok, t, "off") for t in texts], tok.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    times, tokens = [], []
    for r in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        if engine == "rlft":
            out = sample(ids, mask, new_tokens, gen, [])
            n = int(out.completion_mask.sum())
        else:
            torch.manual_seed(r)
            with torch.inference_mode():
                seq = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=tok.pad_token_id, eos_token_id=None)
            n = (seq.shape[1] - ids.shape[1]) * seq.shape[0]
        if r:
            times.append(time.perf_counter() - t0)
            tokens.append(n)
    return {"tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times)), "tokens": tokens[0],
            "peak_rss_mb": peak_rss_mb()}


def run_child(engine: str, model_dir: str, batch: int, new_tokens: int, repeats: int, threads: int,
              src: str = str(HERE.parent)) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--model-dir", model_dir,
           "--batch", str(batch), "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--threads",
           str(threads), "--result", res_path]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([src, str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{err[-3000:]}")
    res = json.loads(Path(res_path).read_text())
    os.unlink(res_path)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="llama-0.4M only")
    ap.add_argument("--models", default="llama-0.4M,gpt2-3M", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--pairs", type=int, default=None, help="A B pairs per setting (default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--rlft-src", default="", help="import rlft from this source folder (e.g. an older checkout)")
    ap.add_argument("--child", choices=["rlft", "generate"])
    ap.add_argument("--model-dir")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, args.model_dir, args.batch, args.new_tokens, args.repeats, args.threads)
        Path(args.result).write_text(json.dumps(res))
        return
    src = str(Path(args.rlft_src).resolve()) if args.rlft_src else str(HERE.parent)
    info = machine(src)
    command = "python benchmarks/sampler.py " + " ".join(argv or sys.argv[1:])
    print(f"machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, transformers "
          f"{info['transformers']}, rlft {info['rlft']} ({info['rlft_commit']})\ncommand: {command}")
    grid = [("llama-0.4M", 32, 32), ("llama-0.4M", 32, 128)] if args.quick else \
        [(m, 32, t) for m in args.models.split(",") for t in (32, 128)]
    pairs = args.pairs or (2 if args.quick else 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {m: build_model(m, Path(tmp)) for m in sorted({g[0] for g in grid})}
        for model, batch, new_tokens in grid:
            runs = {"rlft": [], "generate": []}
            for k in range(pairs):
                for engine in (("rlft", "generate") if k % 2 == 0 else ("generate", "rlft")):
                    runs[engine].append(run_child(engine, dirs[model], batch, new_tokens, 3, args.threads, src))
            row = {"model": model, "batch": batch, "new_tokens": new_tokens}
            for key in ("tokens_per_s", "peak_rss_mb"):
                a = statistics.median(r[key] for r in runs["rlft"])
                b = statistics.median(r[key] for r in runs["generate"])
                row[key] = {"rlft": a, "generate": b, "ratio": a / b}
            rows.append(row)
            print(f"{model} batch {batch} x {new_tokens} tokens: tokens/s rlft {row['tokens_per_s']['rlft']:.0f} "
                  f"generate {row['tokens_per_s']['generate']:.0f} ({row['tokens_per_s']['ratio']:.2f}x); peak RSS "
                  f"{row['peak_rss_mb']['rlft']:.0f} vs {row['peak_rss_mb']['generate']:.0f} MB "
                  f"({row['peak_rss_mb']['ratio']:.2f}x)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["| model | batch x new tokens | tokens/s rlft | tokens/s generate | ratio | peak RSS MB rlft | "
          "peak RSS MB generate | ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['batch']} x {r['new_tokens']} | {r['tokens_per_s']['rlft']:.0f} | "
                  f"{r['tokens_per_s']['generate']:.0f} | **{r['tokens_per_s']['ratio']:.2f}** | "
                  f"{r['peak_rss_mb']['rlft']:.0f} | {r['peak_rss_mb']['generate']:.0f} | "
                  f"**{r['peak_rss_mb']['ratio']:.2f}** |")
    (out / "sampler.json").write_text(json.dumps({"machine": info, "command": command, "results": rows}, indent=1))
    (out / "sampler.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
