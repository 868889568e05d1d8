"""What `rewards.overlap` buys with a slow reward: the same training job with the rewards scored after sampling
and with finished rows scored while the rest decode.

    python benchmarks/overlap.py [--reward-ms 5] [--pairs 2]

The job: llama-0.4M (benchmarks/vs_trl.py's model), 8 prompts x 4 samples, up to 128 new tokens, rlft's sampler;
completions end at one of a few stop strings, so rows finish at different steps (the mean length is reported).
The reward is the benchmark's letter fraction after waiting ``--reward-ms`` per completion, one completion after
another, in `time.sleep` (the GIL is free, as when a reward waits on a sandboxed test, a judge or a remote API).
Runs alternate (off, on, then on, off), each in its own process, 1 torch thread; the table gives medians of the
seconds per step (the interval between reward calls of consecutive steps is not used: with overlap a step
calls the reward several times) from rlft's own `perf/step_seconds`, first step dropped.
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
from benchmarks.vs_trl import build_model, machine, reward  # noqa: E402
from benchmarks.vs_trl import prompts as benchmark_prompts  # noqa: E402

STOPS = [" the ", "."]


def child(overlap: bool, model_dir: str, reward_ms: float, steps: int, seed: int) -> dict:
    import torch

    from rlft.config import Config
    from rlft.train import train

    torch.set_num_threads(1)

    def slow(prompts, completions, **_):
        for _ in completions:
            time.sleep(reward_ms / 1000)
        return reward(prompts, completions)

    slow.__name__ = "slow_letters"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "p.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in benchmark_prompts()))
        cfg = Config.from_dict({
            "model": {"path": model_dir, "chat_template": "off", "add_bos": "off"},
            "data": {"train": str(data), "shuffle": False},
            "rollout": {"batch_prompts": 8, "num_generations": 4, "max_new_tokens": 128, "stop": STOPS},
            "rewards": {"overlap": overlap}, "optim": {"lr": 1e-3, "micro_batch_size": 8},
            "train": {"steps": steps, "seed": seed, "out": str(Path(tmp) / "run")},
            "log": {"console": False, "samples_every": 0}})
        run = train(cfg, rewards=[slow], overwrite=True)
        rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/step_seconds" in r][1:]
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"s_per_step": med("perf/step_seconds"), "sample_s": med("perf/sample_seconds"),
            "reward_s": med("perf/reward_seconds"), "mean_length": med("rollout/len_mean"),
            "reward_mean": med("reward/mean")}


def run(overlap: bool, model_dir: str, reward_ms: float, steps: int, seed: int) -> dict:
    return run_child(__file__, ["--child", "on" if overlap else "off", "--model-dir", model_dir, "--reward-ms",
                                str(reward_ms), "--steps", str(steps), "--seed", str(seed)], [str(HERE.parent)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward-ms", type=float, default=5.0, help="the reward's wait per completion")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--child", choices=["on", "off"])
    ap.add_argument("--model-dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        Path(args.result).write_text(json.dumps(child(args.child == "on", args.model_dir, args.reward_ms, args.steps,
                                                      args.seed)))
        return
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, rlft {info['rlft_commit']}")
    runs: dict = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model("llama-0.4M", Path(tmp))
        for k in range(args.pairs):
            for side in (("off", "on") if k % 2 == 0 else ("on", "off")):
                r = run(side == "on", model_dir, args.reward_ms, args.steps, k)
                runs[side].append(r)
                print(f"  overlap {side:<3} seed {k}: {r['s_per_step']:.3f} s/step, sampling {r['sample_s']:.3f} s, "
                      f"rewards {r['reward_s']:.3f} s, mean length {r['mean_length']:.1f}", flush=True)
    med = {side: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for side, rs in runs.items()}
    table = ["| rewards | s/step | sampling s | reward compute s | mean length |", "|---|---|---|---|---|"]
    for side, label in (("off", "after sampling"), ("on", "overlap")):
        m = med[side]
        table.append(f"| {label} | {m['s_per_step']:.3f} | {m['sample_s']:.3f} | {m['reward_s']:.3f} | "
                     f"{m['mean_length']:.1f} |")
    ratio = med["on"]["s_per_step"] / med["off"]["s_per_step"]
    report = "\n".join(table) + f"\n\nstep time with overlap / without: {ratio:.2f} (reward {args.reward_ms} ms " \
                                f"per completion, medians of {args.pairs} runs each)\n"
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap.json").write_text(json.dumps({"machine": info, "reward_ms": args.reward_ms, "runs": runs,
                                                  "median": med, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
