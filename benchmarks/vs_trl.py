"""rlft against TRL on the same RL job, in one run.

Both sides train the same model (same weights, built once from a config and saved), on the same prompts,
with the same reward function, the same estimator and the same settings (`settings()` lists them; a test
checks that both sides' effective values agree). Runs alternate A B A B, each in its own process, and the
report gives medians and the ratio rlft / TRL of:

* seconds per step: the median interval between consecutive reward calls (each side calls the reward exactly
  once per step, so an interval is one whole step: update, then the next rollout), first step excluded;
* sampled tokens per second: completion tokens sampled per step / seconds per step (the job's throughput);
* peak resident memory: the child's own high-water mark, VmHWM, read at its end (imports, model, optimizer,
  activations). Not ru_maxrss: on Linux exec records the old address space's peak in it, so a child's
  ru_maxrss is at least its parent's RSS at spawn (this harness's own process holds about 400 MB);
* reward after N samples: the mean reward of the last quarter of the steps' samples (same N on both sides).

and, per job, where rlft's step goes (one more rlft run under torch.profiler: seconds per step in matrix
products, attention and other kernels) and the memory floor of any transformers trainer on that model (a process
that only loads the libraries and the model, samples one token and takes one AdamW step); `--no-kernels` skips
both.

    python benchmarks/vs_trl.py            # the full grid (short and long prompts), ~35 min on 2 cores
    python benchmarks/vs_trl.py --quick    # a smaller grid, ~3 min

Writes benchmarks/results/vs_trl.{json,md,png}. Needs the `bench` extra (trl, matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ----------------------------------------------------------------------------------------------- the job

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # as TRL's disable_dropout; rlft has none
MODELS = {
    # name: (architecture, config keywords); vocabulary: the 260-entry byte-level tokenizer
    "llama-0.4M": ("llama", {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True}),
    "gpt2-3M": ("gpt2", {"n_embd": 256, "n_layer": 4, "n_head": 4, **NO_DROPOUT}),
    "gpt2-19M": ("gpt2", {"n_embd": 512, "n_layer": 6, "n_head": 8, **NO_DROPOUT}),
}


@dataclass(frozen=True)
class Job:
    model: str = "llama-0.4M"
    estimator: str = "grpo"           # grpo (TRL GRPOTrainer) or rloo (TRL RLOOTrainer)
    max_new_tokens: int = 32
    steps: int = 12
    batch_prompts: int = 8
    num_generations: int = 4
    micro_batch: int = 8              # sequences per forward/backward; accumulation = B*G / micro_batch
    lr: float = 1e-3
    temperature: float = 1.0
    seed: int = 0
    threads: int = 1                   # torch threads per child (2 shared cores: 1 keeps OpenMP from thrashing)
    prompt: str = "short"              # short (8-30 tokens) or long (~170-220 tokens): see prompts()

    @property
    def name(self) -> str:
        return f"{self.model} {self.max_new_tokens} tok {self.estimator}" + (" long" if self.prompt == "long" else "")


SUBJECTS = ["the cat", "a river", "my friend", "the old house", "one small bird", "the moon", "a green tree",
            "the fast dog"]
VERBS = ["sees", "likes", "finds", "remembers", "paints", "follows", "hears", "keeps"]


def prompts(n: int = 64, kind: str = "short") -> list[str]:
    """Varied, deterministic prompts. short: "the cat sees" (8 to 30 bytes = tokens); long: a six-sentence
    paragraph and an instruction (~170-220 tokens), the shape of a summarisation or reasoning prompt."""
    short = [f"{SUBJECTS[i % 8]} {VERBS[(i // 8) % 8]}" for i in range(n + 48)]
    if kind == "short":
        return short[:n]
    return [" ".join(f"{short[i + 7 * k]} {SUBJECTS[(i + 3 * k) % 8]}." for k in range(6)) +
            " write one more sentence about it:" for i in range(n)]


def reward(prompts, completions, **_) -> list[float]:
    """The fraction of a completion's characters that are lowercase ASCII letters or spaces (0 when empty).
    Cheap, deterministic, and learnable from a random byte-level model (it starts near 27/256)."""
    return [sum(c == " " or "a" <= c <= "z" for c in s) / len(s) if s else 0.0 for s in completions]


def settings(job: Job, side: str) -> dict:
    """The effective settings of one side, read back from its own config objects, in one vocabulary."""
    return (rlft_settings if side == "rlft" else trl_settings)(job)


def rlft_config(job: Job, model_dir: str, data: str, out: str):
    from rlft.config import Config

    agg = {"grpo": "token_mean", "rloo": "seq_mean_token_sum"}[job.estimator]
    return Config.from_dict({
        "model": {"path": model_dir, "dtype": "float32", "device": "cpu", "chat_template": "off", "add_bos": "off"},
        "data": {"train": data, "shuffle": False, "max_prompt_tokens": 256},
        "rollout": {"batch_prompts": job.batch_prompts, "num_generations": job.num_generations,
                    "max_new_tokens": job.max_new_tokens, "temperature": job.temperature, "top_k": 0, "top_p": 1.0},
        "algo": {"estimator": job.estimator, "scale": "group", "num_iterations": 1, "mini_batches": 1,
                 "kl_coef": 0.0, "entropy_coef": 0.0, "agg": agg, "mask_truncated": False, "eps_low": 0.2,
                 "eps_high": 0.2},
        "optim": {"lr": job.lr, "weight_decay": 0.0, "betas": [0.9, 0.999], "max_grad_norm": 1.0, "warmup_steps": 0,
                  "schedule": "constant", "micro_batch_size": job.micro_batch},
        "train": {"steps": job.steps, "seed": job.seed, "out": out, "save_every": 0, "keep_checkpoints": 1},
        "log": {"console": False, "samples_every": 0},
    })


def rlft_settings(job: Job) -> dict:
    import torch

    cfg = rlft_config(job, "model", "data.jsonl", "out")
    r, a, o = cfg.rollout, cfg.algo, cfg.optim
    adam = torch.optim.AdamW([torch.zeros(1)], lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    d = adam.defaults
    n = r.batch_prompts * r.num_generations
    return {
        "estimator": a.estimator,
        "advantage_scale": a.scale if a.estimator == "grpo" else "none",
        "loss_aggregation": {"token_mean": "sum / tokens in the optimizer batch",
                             "seq_mean_token_sum": "sum / sequences in the optimizer batch"}[a.agg],
        "kl_coef": a.kl_coef, "entropy_coef": a.entropy_coef, "num_iterations": a.num_iterations,
        "clip_eps": (a.eps_low, a.eps_high), "mask_truncated": a.mask_truncated,
        "prompts_per_step": r.batch_prompts, "num_generations": r.num_generations,
        "max_new_tokens": r.max_new_tokens, "temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p,
        "eos": "every EOS id of the model; EOS kept in the loss", "micro_batch": o.micro_batch_size,
        "grad_accumulation": n // o.micro_batch_size, "optimizer_steps_per_rollout": a.mini_batches,
        "lr": o.lr, "schedule": o.schedule, "warmup_steps": o.warmup_steps, "max_grad_norm": o.max_grad_norm,
        "adam_betas": tuple(d["betas"]), "adam_eps": d["eps"], "weight_decay": d["weight_decay"],
        "dtype": cfg.model.dtype, "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "dropout": 0.0, "prompt_order": "file order" if not cfg.data.shuffle else "shuffled",
        "seed": cfg.train.seed, "vllm": False,
    }


def trl_config(job: Job, out: str):
    import trl

    common = dict(
        output_dir=out, learning_rate=job.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, optim="adamw_torch",
        per_device_train_batch_size=job.micro_batch,
        gradient_accumulation_steps=job.batch_prompts * job.num_generations // job.micro_batch,
        num_generations=job.num_generations, max_completion_length=job.max_new_tokens,
        temperature=job.temperature, top_k=0, top_p=1.0, beta=0.0, num_iterations=1, epsilon=0.2,
        mask_truncated_completions=False, max_steps=job.steps, seed=job.seed, data_seed=job.seed,
        shuffle_dataset=False, bf16=False, fp16=False, use_cpu=True,
        disable_dropout=True, use_vllm=False, logging_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0)
    # TRL defaults to activation (gradient) checkpointing; rlft's default is off. transformers >= 5.x names it
    # activation_checkpointing (gradient_checkpointing is its deprecated alias).
    names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    common["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    if job.estimator == "grpo":
        return trl.GRPOConfig(loss_type="dapo", scale_rewards="group", **common)
    return trl.RLOOConfig(normalize_advantages=False, **common)


def trl_settings(job: Job) -> dict:
    with tempfile.TemporaryDirectory() as d:
        c = trl_config(job, d)
    grpo = job.estimator == "grpo"
    return {
        "estimator": job.estimator,
        "advantage_scale": c.scale_rewards if grpo else ("batch" if c.normalize_advantages else "none"),
        # dapo: sum / active tokens of the whole accumulated batch; RLOO: sequence log-ratio, mean over sequences
        "loss_aggregation": {"dapo": "sum / tokens in the optimizer batch"}.get(
            getattr(c, "loss_type", None), "sum / sequences in the optimizer batch"),
        "kl_coef": c.beta, "entropy_coef": getattr(c, "entropy_coef", 0.0), "num_iterations": c.num_iterations,
        "clip_eps": (c.epsilon, c.epsilon_high if c.epsilon_high is not None else c.epsilon),
        "mask_truncated": c.mask_truncated_completions,
        "prompts_per_step": c.generation_batch_size // c.num_generations, "num_generations": c.num_generations,
        "max_new_tokens": c.max_completion_length, "temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p,
        "eos": "every EOS id of the model; EOS kept in the loss", "micro_batch": c.per_device_train_batch_size,
        "grad_accumulation": c.gradient_accumulation_steps,
        "optimizer_steps_per_rollout": c.generation_batch_size // (c.per_device_train_batch_size *
                                                                   c.gradient_accumulation_steps),
        "lr": c.learning_rate, "schedule": str(getattr(c.lr_scheduler_type, "value", c.lr_scheduler_type)),
        "warmup_steps": c.warmup_steps, "max_grad_norm": c.max_grad_norm,
        "adam_betas": (c.adam_beta1, c.adam_beta2), "adam_eps": c.adam_epsilon, "weight_decay": c.weight_decay,
        "dtype": "bfloat16" if c.bf16 else "float16" if c.fp16 else "float32",
        "gradient_checkpointing": c.gradient_checkpointing, "dropout": 0.0 if c.disable_dropout else "model's",
        "prompt_order": "shuffled" if c.shuffle_dataset else "file order", "seed": c.seed, "vllm": c.use_vllm,
    }


# -------------------------------------------------------------------------------------------- one child

class Recorder:
    """The reward, recording when it was called, how many tokens were sampled and what it returned.
    ``profile``: run torch.profiler from the second call to the last (whole steps, the first one excluded)."""

    def __init__(self, steps: int = 0, profile: bool = False):
        self.calls: list[dict] = []
        self.__name__ = "reward"
        self.steps, self.profiler = steps, None
        if profile:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU])

    def __call__(self, prompts, completions, completion_ids=None, **kw):
        t, cpu = time.perf_counter(), time.process_time()
        if self.profiler is not None and len(self.calls) == 1:
            self.profiler.start()
        elif self.profiler is not None and len(self.calls) == self.steps - 1:
            self.profiler.stop()
        out = reward(prompts, completions)
        self.calls.append({"t": t, "cpu": cpu, "n": len(completions), "tokens": sum(len(c) for c in completion_ids),
                           "reward": sum(out) / len(out)})
        return out

    def kernel_seconds(self) -> dict:
        """CPU seconds per step in each kind of kernel, over the profiled steps: the matrix products and attention
        (forward and backward), and everything else the profiler saw (elementwise ops, copies, the optimizer)."""
        per = {"matmul": 0.0, "attention": 0.0, "other_ops": 0.0}
        for e in self.profiler.key_averages():
            if not e.key.startswith("aten::"):
                continue
            kind = "matmul" if e.key in MATMULS else "attention" if "scaled_dot_product" in e.key else "other_ops"
            per[kind] += e.self_cpu_time_total / 1e6
        return {k: v / (self.steps - 2) for k, v in per.items()}


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (its exec): VmHWM on Linux. `resource`'s ru_maxrss
    also holds the peak of the address space exec replaced -- the parent's RSS when it spawned this process."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, job: Job, model_dir: str) -> dict:
    """One run of ``side``: rlft or trl; "rlft-kernels", rlft's run under torch.profiler (where its step's time
    goes); "floor", the fixed memory of any transformers trainer on this model (`floor`)."""
    import torch

    torch.set_num_threads(job.threads)
    if side == "floor":
        return floor(model_dir)
    rec = Recorder(job.steps, profile=side == "rlft-kernels")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if side.startswith("rlft"):
            from rlft.train import train

            data = Path(tmp) / "prompts.jsonl"
            data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(kind=job.prompt)))
            train(rlft_config(job, model_dir, str(data), str(Path(tmp) / "run")), rewards=[rec], overwrite=True)
        else:
            import datasets
            import trl
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            ds = datasets.Dataset.from_list([{"prompt": p} for p in prompts(kind=job.prompt)])
            cls = trl.GRPOTrainer if job.estimator == "grpo" else trl.RLOOTrainer
            trainer = cls(model=model, reward_funcs=[rec], args=trl_config(job, tmp), train_dataset=ds,
                          processing_class=tok)
            trainer.train()
    wall = time.perf_counter() - t0
    import rlft

    return {"calls": rec.calls, "wall_s": wall, "rlft_file": rlft.__file__, "peak_rss_mb": peak_rss_mb(),
            **({"kernels": rec.kernel_seconds()} if rec.profiler is not None else {})}


def floor(model_dir: str) -> dict:
    """What every transformers-based trainer holds whatever it does: torch and transformers imported, the model
    and tokenizer loaded, one token sampled with `generate`, one AdamW step on a one-token forward and backward
    (the libraries' kernels and autograd initialised). A trainer's peak memory above this is its own."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([tok("a", add_special_tokens=False)["input_ids"][:1]])
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=1,
                       pad_token_id=tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=ids).logits.float().log_softmax(-1).mean().backward()
    opt.step()
    return {"calls": [], "wall_s": 0.0, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------ the harness

def build_model(name: str, folder: Path, seed: int = 0) -> str:
    """Build the model from its config once (seeded) and save it; both sides load this folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlft.tiny import byte_tokenizer

    arch, kw = MODELS[name]
    tok = byte_tokenizer()
    pos = {"n_positions": 512} if arch == "gpt2" else {"max_position_embeddings": 512}
    cfg = AutoConfig.for_model(arch, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, **pos, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    path = folder / name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def run_child(side: str, job: Job, model_dir: str, timeout: float, src: str = str(ROOT)) -> dict:
    """One run in a fresh process, which reports its own peak RSS (`peak_rss_mb`)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--job", json.dumps(asdict(job)),
           "--model-dir", model_dir, "--result", res_path]
    path = [src, str(ROOT)] if side.startswith("rlft") else [str(ROOT)]  # the rlft side may run another checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(job.threads)}
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            status, _ = _wait(proc.pid, timeout)
        except TimeoutError:
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise RuntimeError(f"{side} {job.name}: timed out after {timeout:.0f} s") from None
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{side} {job.name} failed:\n{err.read()[-3000:]}")
    res = json.loads(Path(res_path).read_text())
    os.unlink(res_path)
    res["process_s"] = time.time() - t0
    return res


def _wait(pid: int, timeout: float):
    end = time.time() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return status, usage
        if time.time() > end:
            raise TimeoutError
        time.sleep(0.05)


def summarize_run(res: dict, job: Job) -> dict:
    calls = res["calls"]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(calls)][1:]  # drop the first step (warm-up)
    s_step = statistics.median(gaps)
    cpu_step = statistics.median([b["cpu"] - a["cpu"] for a, b in itertools.pairwise(calls)][1:])
    tokens = statistics.median(c["tokens"] for c in calls)
    tail = calls[-max(1, len(calls) // 4):]
    return {"s_per_step": s_step, "cpu_s_per_step": cpu_step, "tokens_per_s": tokens / s_step,
            "peak_rss_mb": res["peak_rss_mb"],
            "final_reward": sum(c["reward"] for c in tail) / len(tail), "curve": [c["reward"] for c in calls],
            "samples": sum(c["n"] for c in calls), "wall_s": res["wall_s"]}


METRICS = [("s_per_step", "s / step"), ("tokens_per_s", "sampled tokens / s"), ("peak_rss_mb", "peak RSS (MB)"),
           ("final_reward", "reward after N samples")]


def machine(src: str = str(ROOT)) -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = None
    import rlft

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl_v, "rlft": rlft.__version__,
            "rlft_commit": _commit(Path(src)), "rlft_src": src}


def _commit(src: Path) -> str | None:
    """The source's git commit (with '+' when it has uncommitted changes), or the COMMIT file of an export."""
    if (src / "COMMIT").is_file():
        return (src / "COMMIT").read_text().strip()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rlft"], cwd=src, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return (head + ("+" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


STEPS = {("llama-0.4M", 32): 10, ("llama-0.4M", 128): 8, ("gpt2-3M", 32): 6, ("gpt2-3M", 128): 5,
         ("gpt2-19M", 32): 4, ("gpt2-19M", 128): 3}


def grid(quick: bool, models: list[str]) -> tuple[list[Job], int]:
    """The jobs and the number of A B pairs per job."""
    if quick:
        return [Job("llama-0.4M", est, 32, steps=8) for est in ("grpo", "rloo")], 2
    jobs = [Job(m, est, tokens, steps=STEPS.get((m, tokens), 5))
            for m in models for tokens in (32, 128) for est in ("grpo", "rloo")]
    jobs += [Job(m, est, tokens, steps=max(3, STEPS.get((m, tokens), 5) - 2), prompt="long")
             for m in models for tokens in (32, 128) for est in ("grpo", "rloo")]
    return jobs, 2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="llama-0.4M, 32 tokens, both estimators (~3 min)")
    ap.add_argument("--models", default="llama-0.4M,gpt2-3M", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--pairs", type=int, help="A B pairs per job (default 2)")
    ap.add_argument("--only", default="", help="run only jobs whose name contains this text")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for vs_trl.{json,md,png}")
    ap.add_argument("--rlft-src", default="", help="run the rlft side from this source folder (holding rlft/), "
                    "e.g. an older checkout, for a before/after comparison")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child run")
    ap.add_argument("--no-kernels", action="store_true", help="skip the profiled rlft run and the floor run per job")
    ap.add_argument("--child", choices=["rlft", "trl", "rlft-kernels", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, Job(**json.loads(args.job)), args.model_dir)
        Path(args.result).write_text(json.dumps(res))
        return

    command = "python benchmarks/vs_trl.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else
                                                                                  sys.argv[1:]))
    src = str(Path(args.rlft_src).resolve()) if args.rlft_src else str(ROOT)
    info = machine(src)
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, trl {info['trl']}, rlft {info['rlft']} ({info['rlft_commit']})")
    print(f"command: {command}", flush=True)
    if info["trl"] is None:
        sys.exit("trl is not installed: pip install -e '.[bench]'")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    jobs, pairs = grid(args.quick, models)
    pairs = args.pairs or pairs
    jobs = [j for j in jobs if args.only in j.name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {m: build_model(m, Path(tmp)) for m in sorted({j.model for j in jobs})}
        for job in jobs:
            runs = {"rlft": [], "trl": []}
            for k in range(pairs):
                job_k = Job(**{**asdict(job), "seed": job.seed + k})
                order = ("rlft", "trl") if k % 2 == 0 else ("trl", "rlft")  # A B, then B A
                for side in order:
                    r = summarize_run(run_child(side, job_k, dirs[job.model], args.timeout, src), job_k)
                    runs[side].append(r)
                    print(f"  {job.name:<26} {side:<4} seed {job_k.seed}: {r['s_per_step']:.3f} s/step, "
                          f"{r['peak_rss_mb']:.0f} MB, reward {r['final_reward']:.3f}", flush=True)
            row = {"job": job.name, **asdict(job), "pairs": pairs, "runs": runs}
            for key, _ in METRICS + [("cpu_s_per_step", "")]:
                a = statistics.median(r[key] for r in runs["rlft"])
                b = statistics.median(r[key] for r in runs["trl"])
                row[key] = {"rlft": a, "trl": b, "ratio": a / b if b else float("nan")}
            if not args.no_kernels:  # where rlft's step goes, and the memory no trainer can go below
                row["kernels"] = run_child("rlft-kernels", job, dirs[job.model], args.timeout, src)["kernels"]
                row["floor_mb"] = run_child("floor", job, dirs[job.model], args.timeout, src)["peak_rss_mb"]
                row.update(bounds(row))
            results.append(row)
            print(_line(row), flush=True)
    report = {"machine": info, "command": command, "seconds": round(time.time() - t_start),
              "settings": {j.estimator: {"rlft": settings(j, "rlft"), "trl": settings(j, "trl")} for j in jobs},
              "results": results}
    (out / "vs_trl.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "vs_trl.md").write_text(markdown(report))
    plot(results, out / "vs_trl.png")
    print(markdown(report))
    print(f"wrote {out / 'vs_trl.json'}, {out / 'vs_trl.md'}, {out / 'vs_trl.png'} in {report['seconds']} s")


def bounds(row: dict) -> dict:
    """What the two extra runs say about the targets (3x TRL's steps per second, 0.75x its peak memory):
    ``kernel_bound``: TRL's s/step over rlft's matrix-product and attention seconds per step, the speed-up rlft
    would have if nothing else in its step cost anything; ``floor_ratio``: the fixed floor over TRL's peak, the
    lowest memory ratio any transformers trainer can reach; ``above_floor_ratio``: rlft's memory above the floor
    over TRL's."""
    k, mem = row["kernels"], row["peak_rss_mb"]
    floor_mb = row["floor_mb"]
    return {"kernel_bound": row["s_per_step"]["trl"] / max(k["matmul"] + k["attention"], 1e-9),
            "floor_ratio": floor_mb / mem["trl"],
            "above_floor_ratio": (mem["rlft"] - floor_mb) / max(mem["trl"] - floor_mb, 1e-9)}


def _line(row: dict) -> str:
    return f"{row['job']:<26} " + "  ".join(f"{label} {row[k]['ratio']:.2f}x" for k, label in METRICS)


def markdown(report: dict, title: str = "") -> str:
    m = report["machine"]
    res = report["results"]
    lines = ([f"### {title}", ""] if title else []) + [
        f"Machine: {m['cpu']}, {m['cores']} cores. python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, trl {m['trl']}, rlft {m['rlft']} ({m['rlft_commit']}).", "",
        f"Command: `{report['command']}` ({report['seconds']} s). Medians over {res[0]['pairs']} runs per side; "
        "ratio = rlft / TRL: below 1 is better for s/step and memory, above 1 for tokens/s and reward. "
        "N = steps x 32 samples.", "",
        "| job | N | s/step rlft | s/step TRL | **ratio** | CPU s/step ratio | tokens/s ratio | peak RSS MB rlft | "
        "peak RSS MB TRL | **ratio** | reward rlft | reward TRL | **ratio** |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        s, c, t, mem, rew = (r[k] for k in ("s_per_step", "cpu_s_per_step", "tokens_per_s", "peak_rss_mb",
                                           "final_reward"))
        lines.append(f"| {r['job']} | {r['steps'] * r['batch_prompts'] * r['num_generations']} | {s['rlft']:.3f} | "
                     f"{s['trl']:.3f} | **{s['ratio']:.2f}** | {c['ratio']:.2f} | {t['ratio']:.2f} | "
                     f"{mem['rlft']:.0f} | {mem['trl']:.0f} | **{mem['ratio']:.2f}** | {rew['rlft']:.3f} | "
                     f"{rew['trl']:.3f} | **{rew['ratio']:.2f}** |")
    bounded = [r for r in res if "kernels" in r]
    if bounded:
        lines += ["", "Where rlft's step goes (one more rlft run under torch.profiler, steps after the first; CPU "
                  "seconds per step by kernel kind), and the memory floor (a process that only imports torch and "
                  "transformers, loads the model, samples one token and takes one AdamW step). *kernel bound*: TRL's "
                  "s/step over rlft's matrix-product + attention s/step, the speed-up over TRL if nothing else cost "
                  "anything. *floor / TRL*: the lowest memory ratio any transformers trainer can have.", "",
                  "| job | s/step rlft | matmul | attention | other ops | s/step TRL | **kernel bound** | floor MB | "
                  "**floor / TRL** | above floor: rlft / TRL |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in bounded:
            k, mem = r["kernels"], r["peak_rss_mb"]
            lines.append(f"| {r['job']} | {r['s_per_step']['rlft']:.3f} | {k['matmul']:.3f} | {k['attention']:.3f} | "
                         f"{k['other_ops']:.3f} | {r['s_per_step']['trl']:.3f} | **{r['kernel_bound']:.1f}x** | "
                         f"{r['floor_mb']:.0f} | **{r['floor_ratio']:.2f}** | "
                         f"{mem['rlft'] - r['floor_mb']:.0f} / {mem['trl'] - r['floor_mb']:.0f} MB = "
                         f"{r['above_floor_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results):
        per_step = r["batch_prompts"] * r["num_generations"]
        for side, colour in (("rlft", "tab:blue"), ("trl", "tab:orange")):
            curves = [run["curve"] for run in r["runs"][side]]
            steps = min(len(c) for c in curves)
            med = [statistics.median(c[i] for c in curves) for i in range(steps)]
            x = [(i + 1) * per_step for i in range(steps)]
            for c in curves:
                ax.plot(x, c[:steps], color=colour, alpha=0.2, lw=0.8)
            ax.plot(x, med, color=colour, lw=2, label=side if side == "rlft" else "TRL")
        ax.set_title(r["job"], fontsize=9)
        ax.set_xlabel("samples")
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
