"""What each speed change buys: the same rollout and update with one change switched off at a time.

    python benchmarks/ablation.py [--rlft-src OLD_CHECKOUT]

Each variant runs in its own process (CPU seconds of that process, median of 5 repeats, 1 thread), in
``--rounds`` interleaved rounds (the table gives medians over rounds):

* sampler: 32 prompts x 128 new tokens, EOS as the model samples it (some rows finish early);
  `old` = the sampler of --rlft-src; `transformers forward` = the new loop over transformers' forward and
  cache (rlft/backends/lean.py off); `keep finished rows` = rlft/backends/lean.py with finished rows left in the batch;
  `one prefill per row` = the prefill run for every row, not once per distinct prompt; `norm modules` =
  transformers' RMSNorm modules instead of F.rms_norm (Llama family, float32);
* update: one micro-batch of 8 x (prompt + 128 tokens) (two prompts, four samples each), forward + backward;
  `no prompt sharing` = every row runs its prompt + completion; `transformers forward` = rlft/backends/lean.py off (its
  GELU included, prompts not shared), with the peak RSS of that process.

``--prompt long`` uses the benchmark's ~200-token prompts instead of the short ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))

from benchmarks import run_child  # noqa: E402
from benchmarks.vs_trl import build_model, peak_rss_mb, prompts  # noqa: E402


def child(kind: str, variant: str, model_dir: str, new_tokens: int, prompt: str = "short") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rlft.backends.base
    import rlft.backends.lean
    from rlft import backends
    from rlft.backends.lean import Decoder
    from rlft.policy import encode_prompt, left_pad, prepare_tokenizer
    from rlft.sampling import SamplingParams
    from rlft.step import MicroBatch

    torch.set_num_threads(1)
    if variant == "transformers forward":
        rlft.backends.base.lean = lambda *a, **k: None
    if variant == "keep finished rows":
        Decoder.keep = None
    if variant == "one prefill per row":
        Decoder.share_prefill = False
    if variant == "norm modules":
        rlft.backends.lean.RMS_NORMS = ()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prepare_tokenizer(tok)
    backend = backends.plain(model, tok)
    texts = [p for p in prompts(8, prompt) for _ in range(4)]
    ids, mask = left_pad([encode_prompt(tok, t, "off") for t in texts], tok.pad_token_id)
    times = []
    if kind == "sampler":
        model.eval()
        for r in range(6):
            gen = torch.Generator().manual_seed(r)
            t0 = time.process_time()
            out = backend.sample(ids, mask, SamplingParams(new_tokens, 1.0), generator=gen)
            times.append(time.process_time() - t0)
        extra = {"mean_length": float(out.completion_mask.sum(-1).float().mean())}
    else:
        model.train()
        comp = torch.randint(4, 200, (8, new_tokens), generator=torch.Generator().manual_seed(0))
        cmask = torch.ones_like(comp)
        for _ in range(6):
            t0 = time.process_time()
            rows = torch.arange(8)
            if variant not in ("no prompt sharing", "transformers forward"):  # rows 0-3 and 4-7 share prompts
                mb = MicroBatch(rows, ids[[0, 4]], mask[[0, 4]], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), comp, cmask)
            else:
                mb = MicroBatch(rows, ids[:8], mask[:8], None, comp, cmask)
            st = backend.logprobs(mb, with_entropy=True)
            st.logp.sum().backward()
            times.append(time.process_time() - t0)
        extra = {}
    return {"cpu_s": statistics.median(times[1:]),
            "peak_rss_mb": peak_rss_mb(), **extra}


def run(kind: str, variant: str, model_dir: str, new_tokens: int, src: str | None, prompt: str = "short") -> dict:
    return run_child(__file__, ["--child", kind, "--variant", variant, "--model-dir", model_dir, "--new-tokens",
                                str(new_tokens), "--prompt", prompt], [src] if src else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rlft-src", default="", help="an older checkout for the `old` sampler row")
    ap.add_argument("--child")
    ap.add_argument("--variant", default="")
    ap.add_argument("--model-dir")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", choices=["short", "long"], default="short", help="the benchmark's prompt kind")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every variant (medians)")
    ap.add_argument("--only", default="", help="comma-separated variants to run besides `all changes`")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        Path(args.result).write_text(json.dumps(child(args.child, args.variant, args.model_dir, args.new_tokens,
                                                      args.prompt)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("llama-0.4M", "gpt2-3M"):
            d = build_model(model, Path(tmp))
            cases = [("sampler", "all changes", None), ("sampler", "one prefill per row", None),
                     ("sampler", "keep finished rows", None), ("sampler", "norm modules", None),
                     ("sampler", "transformers forward", None)]
            if args.rlft_src:
                cases.append(("sampler", "old", str(Path(args.rlft_src).resolve())))
            cases += [("update", "all changes", None), ("update", "no prompt sharing", None),
                      ("update", "norm modules", None), ("update", "transformers forward", None)]
            only = {v.strip() for v in args.only.split(",") if v.strip()}
            if only:
                cases = [c for c in cases if c[1] in only | {"all changes"}]
            runs: dict = {c: [] for c in cases}
            for _ in range(args.rounds):  # interleaved rounds: a busy moment hits every variant alike
                for case in cases:
                    runs[case].append(run(case[0], case[1], d, args.new_tokens, case[2], args.prompt))
            for (kind, variant, _), rs in runs.items():
                r = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
                rows.append({"model": model, "kind": kind, "variant": variant, **r})
                print(f"{model:<11} {kind:<8} {variant:<21} {r['cpu_s'] * 1e3:8.1f} ms  "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB" + (f"  mean length {r['mean_length']:.1f}"
                                                               if "mean_length" in r else ""), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "ablation.json" if args.prompt == "short" else f"ablation-{args.prompt}.json"
    if args.only:
        name = name.replace(".json", f"-{'-'.join(sorted(only)).replace(' ', '_')}.json")
    (out / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
