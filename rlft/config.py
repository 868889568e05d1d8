"""One tree of dataclasses for a run: model, data, rollout, rewards, algo, optim, train, log, sft.

Each field is documented once, where it is declared (``doc=``, with its allowed values); that text is also
the CLI help (``rlft config-help``). A config is loaded from YAML, then dotted ``key=value`` overrides apply,
then it is validated and never changed again. Unknown keys and wrong types are errors that name the key.

Keys that apply only with another key's value (``APPLIES``: ``algo.scale`` only with ``algo.estimator=grpo``,
the ``rollout.vllm_*`` keys only with ``rollout.engine=vllm``, ...): a key the USER set (in the YAML file or a
``key=value`` override) to a value other than its default, where it does not apply, is an error naming the
key, why it does not apply and what would make it apply -- a setting that would silently do nothing. A key
that a TASK PRESET set (``task: translation`` merges the preset under the user's keys) is not an error: the
preset was written for the default estimator, engine, ... and the user may have changed those. Either way a
key that does not apply is then held at its default in the loaded config, so the config describes what runs,
and the copy saved beside every checkpoint (``Config.save``) loads again without error (resume, ``rlft eval``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError  # noqa: F401 -- raised here, importable from here
from .tasks import preset


def opt(default, doc: str, choices: tuple | None = None):
    """A config field with its documentation (and allowed values) declared in one place."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoraConfig:
    r: int = opt(0, "LoRA rank; 0 = full fine-tuning. Needs the `lora` extra (PEFT).")
    alpha: int = opt(16, "LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = opt(0.0, "Dropout on the LoRA path.")
    target_modules: list = opt(["all-linear"], "Modules that get adapters: names like q_proj, v_proj, or "
                               "'all-linear'.")
    save_merged: bool = opt(False, "Also write the final checkpoint with adapters merged into the weights "
                            "(`merged/`, loadable by plain transformers).")


@dataclass
class ModelConfig:
    path: str = opt("", "Local folder or hub id of an AutoModelForCausalLM or AutoModelForSeq2SeqLM (and its "
                    "tokenizer).")
    kind: str = opt("auto", "causal (decoder-only), seq2seq (encoder-decoder: T5, BART, Marian, NLLB), or auto (the "
                    "checkpoint's config.is_encoder_decoder).", ("auto", "causal", "seq2seq"))
    forced_bos_token: str = opt("", "seq2seq only: the token the decoder starts with after decoder_start (NLLB / "
                                "mBART target language, e.g. fra_Latn); empty = the model's generation_config.")
    tokenizer: str = opt("", "Tokenizer folder or hub id, when it differs from `path`.")
    dtype: str = opt("float32", "Weights dtype.", ("float32", "bfloat16", "float16"))
    device: str = opt("auto", "`auto` picks cuda when present, else cpu; or `cpu`, `cuda`, `cuda:1`.")
    chat_template: str = opt("auto", "Wrap prompts with the tokenizer's chat template: auto (when it has one), "
                             "on, off.", ("auto", "on", "off"))
    add_bos: str = opt("auto", "Prepend BOS to prompts: auto (when the tokenizer itself adds one), on, off.",
                       ("auto", "on", "off"))
    trust_remote_code: bool = opt(False, "Allow model code from the hub (transformers' trust_remote_code).")
    revision: str = opt("", "Hub revision (branch, tag or commit) to load.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: less memory, ~30% "
                                       "more compute in the update.")
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train: str = opt("", "Training prompts: a .jsonl, .json, .csv, .tsv or .parquet file, or a folder written by "
                     "datasets' save_to_disk (one split).")
    eval: str = opt("", "Evaluation prompts (same format); empty to split `eval_fraction` off `train`.")
    eval_fraction: float = opt(0.0, "Fraction of `train` held out for evaluation when `eval` is empty.")
    columns: dict = opt({}, "Columns to add before anything else, {new_name: source_column}, e.g. {prompt: "
                        "question, reference: answers}; the source column stays too.")
    prompt_column: str = opt("prompt", "Column holding the prompt text (or a list of chat messages).")
    reference_column: str = opt("reference", "Column holding the reference completion(s); passed to rewards "
                                "as `reference` and used by `sft`.")
    template: str = opt("{prompt}", "Python format string turning a row into the prompt text; any column "
                        "can appear, e.g. 'Translate: {prompt}\\n'.")
    system: str = opt("", "System message for chat models (only with a chat template).")
    shuffle: bool = opt(True, "Shuffle the prompts each epoch (seeded; a resumed run continues exactly).")
    max_prompt_tokens: int = opt(256, "Longest prompt in tokens; longer ones are handled by `long_prompts`.")
    long_prompts: str = opt("truncate", "Prompts over `max_prompt_tokens`: truncate from the left (counted), "
                            "skip (counted), or error.", ("truncate", "skip", "error"))
    bad_rows: str = opt("error", "A row that cannot be read: error (naming file and line) or skip (counted).",
                        ("error", "skip"))


@dataclass
class RolloutConfig:
    batch_prompts: int = opt(8, "Prompts per step (B). Each is sampled `num_generations` times.")
    num_generations: int = opt(4, "Completions per prompt (G), the group for rloo / grpo.")
    max_new_tokens: int = opt(64, "Longest completion in tokens.")
    temperature: float = opt(1.0, "Sampling temperature; 0 = greedy. Log-probs in the loss use the same one.")
    top_k: int = opt(0, "Sample only from the k most likely tokens; 0 = off.")
    top_p: float = opt(1.0, "Nucleus sampling: the smallest set with this much probability; 1 = off.")
    stop: list = opt([], "Stop strings: a completion ends when its text ends with one (kept in the tokens, "
                     "removed from the text the rewards see).")
    engine: str = opt("rlft", "rlft (own KV-cached loop), hf (transformers.generate), or vllm (a vLLM engine in the "
                      "training process that receives the policy's weights after each update; GPU only, the `vllm` "
                      "extra; docs/scaling.md).", ("rlft", "hf", "vllm"))
    decode: str = opt("auto", "engine rlft, models lean covers (Llama family, Qwen2/3, Mistral, GPT-2): auto (graph on "
                      "a CUDA GPU, eager elsewhere), eager (the KV cache read up to the current length; finished rows "
                      "leave the batch), or graph (one fixed-shape step over the whole preallocated cache, recorded "
                      "as CUDA graphs on a GPU; on a CPU the same step runs uncaptured). docs/gpu.md.",
                      ("auto", "eager", "graph"))
    tis_cap: float = opt(2.0, "engine vllm: truncated importance sampling, the cap C on each token's weight "
                         "min(exp(trainer logp - vLLM logp), C) in the policy-gradient loss (rlft/loss.py); 0 = off.")
    vllm_gpu_memory_utilization: float = opt(0.3, "engine vllm: the fraction of GPU memory vLLM takes (weights and "
                                             "KV cache), beside the trainer's model, gradients and optimizer state.")
    vllm_sleep: bool = opt(False, "engine vllm: free vLLM's GPU memory (weights and KV cache) during each update "
                           "and restore it with the new weights (vLLM sleep mode).")


@dataclass
class RewardSpec:
    fn: str = opt("", "A built-in name (bleu, exact_match, ...), 'package.module:function' or "
                  "'path/to/file.py:function'.")
    name: str = opt("", "Name in the metrics (`reward/<name>`); defaults to the function's name.")
    weight: float = opt(1.0, "Weight in the summed reward.")
    args: dict = opt({}, "Extra keyword arguments passed to the reward.")


@dataclass
class RewardsConfig:
    components: list = opt([], "The rewards, summed with their weights. In YAML, `rewards:` may be this "
                           "list directly.")
    normalize: str = opt("none", "none, or group: standardise each component within its group before "
                         "summing.", ("none", "group"))
    on_error: str = opt("raise", "A reward that raises or returns NaN/inf, or an environment (env.cls) that raises "
                        "or breaks its contract: raise (stop, naming reward or environment, step, turn and sample) "
                        "or drop (the sample gets no gradient; counted).", ("raise", "drop"))
    overlap: bool = opt(False, "Score completions while the rest still decode (rollout.engine rlft): at each of the "
                        "sampler's host syncs (every 8 tokens) the rows finished since the last one (whole groups "
                        "with normalize: group) go to the rewards in a background thread. Pays when rewards are "
                        "slow (sandboxed tests, judges, remote APIs); the rewards then see the batch in parts.")


TRACKERS = ("tensorboard", "wandb", "mlflow")
ESTIMATORS = ("reinforce", "value", "rloo", "grpo", "reinforce_pp", "remax")


@dataclass
class AlgoConfig:
    estimator: str = opt("grpo", "How rewards become advantages (docs/algorithms.md).", ESTIMATORS)
    baseline: str = opt("batch", "reinforce only: none, ema (moving average of returns), batch (batch mean).",
                        ("none", "ema", "batch"))
    ema_decay: float = opt(0.9, "reinforce with baseline ema: b <- decay * b + (1 - decay) * mean return.")
    scale: str = opt("group", "grpo only: divide by the group std, the batch std, or not (none = Dr. GRPO).",
                     ("group", "batch", "none"))
    group_baseline: bool = opt(False, "reinforce_pp only: subtract the group mean reward before whitening.")
    gamma: float = opt(1.0, "Discount for returns R_t = sum_k gamma^(k-t) r_k.")
    filter_groups: bool = opt(False, "Drop groups whose rewards are all equal and sample again (DAPO).")
    max_filter_rounds: int = opt(3, "With filter_groups: extra sampling rounds before training on what there is.")
    num_iterations: int = opt(1, "Passes over each rollout; 1 = plain REINFORCE (ratio exactly 1).")
    mini_batches: int = opt(1, "Optimizer steps per pass over the rollout.")
    eps_low: float = opt(0.2, "Ratio clip below: clip(rho, 1 - eps_low, ...).")
    eps_high: float = opt(0.2, "Ratio clip above: clip(rho, ..., 1 + eps_high) (DAPO uses 0.28).")
    kl_coef: float = opt(0.0, "Weight of the KL to the reference (initial) policy; 0 = no reference model.")
    kl_estimator: str = opt("k3", "KL estimator on d = logp - ref_logp: k1 = d, k2 = d^2/2, k3 = e^-d - 1 + d.",
                            ("k1", "k2", "k3"))
    kl_in: str = opt("loss", "Put the KL in the loss, or subtract kl_coef * k1 from the per-token reward.",
                     ("loss", "reward"))
    entropy_coef: float = opt(0.0, "Weight of the entropy bonus.")
    agg: str = opt("token_mean", "Loss aggregation over the batch.",
                   ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_norm"))
    mask_truncated: bool = opt(False, "Leave completions cut by max_new_tokens out of the loss.")
    value_coef: float = opt(0.5, "value estimator: weight of the value head's MSE loss.")


@dataclass
class OptimConfig:
    lr: float = opt(1e-5, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    betas: list = opt([0.9, 0.999], "AdamW betas.")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this; 0 = off.")
    warmup_steps: int = opt(0, "Linear warmup, in optimizer steps.")
    schedule: str = opt("constant", "Learning rate after warmup.", ("constant", "cosine"))
    micro_batch_size: int = opt(8, "Sequences per forward/backward; gradients accumulate exactly over the rest.")
    share_prompts: bool = opt(True, "The G samples of a prompt share one forward pass over it in the update (the "
                              "same log-probs and gradient to float rounding; G-fold less prompt compute). Applies "
                              "to models rlft/backends/lean.py covers; off: each sample runs prompt + completion.")


@dataclass
class SFTConfig:
    steps: int = opt(0, "Supervised warm-start steps on (prompt, reference) before RL; 0 = none.")
    lr: float = opt(1e-3, "Learning rate of the warm start.")
    batch_size: int = opt(16, "Examples per warm-start step.")
    warmup_steps: int = opt(0, "Linear warmup of the warm start.")


@dataclass
class TrainConfig:
    steps: int = opt(100, "RL steps (one rollout each).")
    seed: int = opt(0, "Seeds data order, sampling, and initialisation of new parts.")
    out: str = opt("runs/rlft", "Run folder: config, metrics.jsonl, samples, checkpoints.")
    eval_every: int = opt(0, "Greedy evaluation on the eval split every this many steps (and at the end); 0 = "
                          "only at the end when there is an eval split.")
    eval_max_prompts: int = opt(256, "At most this many eval prompts.")
    save_every: int = opt(0, "Checkpoint every this many steps (and at the end); 0 = only at the end.")
    keep_checkpoints: int = opt(2, "Keep the newest this many checkpoints; 0 = keep all.")
    parallel: str = opt("ddp", "Under torchrun with more than one process: ddp (every rank holds the whole model; "
                        "gradients summed in one all-reduce) or fsdp (FSDP2: parameters, gradients and optimizer state "
                        "sharded over the ranks, for models that do not fit one device; docs/scaling.md).",
                        ("ddp", "fsdp"))
    fsdp_offload: bool = opt(False, "parallel fsdp: keep the parameter shards, gradients and optimizer state in host "
                             "memory between uses (FSDP2 CPUOffloadPolicy; the optimizer step runs on the CPU).")
    fsdp_sampling: str = opt("gathered", "parallel fsdp: gathered (every rank all-gathers the full weights once per "
                             "rollout and samples with no collective: fast, but the full weights must fit one device) "
                             "or sharded (the weights stay sharded: each decoding step all-gathers one layer at a time "
                             "and the ranks decode in lockstep, for models whose weights do not fit one device).",
                             ("gathered", "sharded"))


@dataclass
class LogConfig:
    console: bool = opt(True, "A progress bar and one line per step on the console.")
    samples_every: int = opt(10, "Show and save a table of samples every this many steps; 0 = never.")
    num_samples: int = opt(4, "Samples per table.")
    report_to: list = opt([], "Trackers that also receive every metrics line, among tensorboard, wandb and mlflow "
                          "(e.g. [tensorboard, mlflow]); empty = only OUT/metrics.jsonl.")


@dataclass
class EnvConfig:
    cls: str = opt("", "A multi-turn environment (Gymnasium's reset/step contract, docs/environments.md): a "
                   "registered name, 'package.module:Class' or 'path/to/file.py:Class'; empty = one completion per "
                   "prompt. One instance per episode; rewards, if any, score the episode's last model turn.")
    args: dict = opt({}, "Keyword arguments for the environment's constructor.")
    max_turns: int = opt(8, "Most model turns per episode; an episode still running after them is truncated "
                         "(counted in rollout/truncated_episodes).")
    max_tokens: int = opt(1024, "Most tokens per episode after its first observation, the model's and the "
                          "environment's together; an episode that reaches it is truncated (counted). Each model "
                          "turn is also at most rollout.max_new_tokens.")


@dataclass
class Config:
    task: str = opt("", "A task preset (translation, summarization, dialogue, creative_writing, code_completion, "
                    "bug_fixing, style_conversion): its settings sit under this config, every key overridable "
                    "(docs/tasks/).")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    env: EnvConfig = field(default_factory=EnvConfig)

    @staticmethod
    def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
        """YAML file, then ``key=value`` overrides; validated. ``Config.load()`` gives the defaults."""
        raw: dict = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                raw = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(raw).__name__}")
        for item in overrides or []:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. algo.estimator=rloo)")
            parts = key.strip().split(".")
            if isinstance(raw.get("rewards"), list):  # `rewards: [...]` is sugar for rewards.components
                raw["rewards"] = {"components": raw["rewards"]}
            if parts == ["rewards"]:
                parts = ["rewards", "components"]
            node = raw
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {p} is not a section")
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
        return Config.from_dict(raw)

    @staticmethod
    def from_dict(raw: dict) -> Config:
        raw = dict(raw)
        if isinstance(raw.get("rewards"), list):  # sugar: `rewards: [...]` is rewards.components
            raw["rewards"] = {"components": raw["rewards"]}
        user = raw
        if raw.get("task") and isinstance(raw["task"], str):  # the preset goes under the user's keys
            raw = merge(preset(raw["task"]), raw)
        cfg = _build(Config, raw, "")
        _check_applies(cfg, user)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self) -> None:
        """Cross-field checks; each error names the keys involved."""
        r, a = self.rollout, self.algo
        needs_groups = a.estimator in ("rloo", "grpo") or (a.estimator == "reinforce_pp" and a.group_baseline)
        if needs_groups and r.num_generations < 2:
            raise ConfigError(f"algo.estimator={a.estimator} compares the samples of one prompt, so "
                              f"rollout.num_generations must be >= 2 (got {r.num_generations})")
        for key, v in [("rollout.batch_prompts", r.batch_prompts), ("rollout.num_generations", r.num_generations),
                       ("rollout.max_new_tokens", r.max_new_tokens), ("optim.micro_batch_size",
                       self.optim.micro_batch_size), ("algo.num_iterations", a.num_iterations),
                       ("algo.mini_batches", a.mini_batches), ("data.max_prompt_tokens", self.data.max_prompt_tokens)]:
            if v < 1:
                raise ConfigError(f"{key} must be >= 1 (got {v})")
        n = r.batch_prompts * r.num_generations
        if n % a.mini_batches or (n // a.mini_batches) % r.num_generations:
            raise ConfigError(f"the batch of rollout.batch_prompts * rollout.num_generations = {n} samples cannot "
                              f"be split into algo.mini_batches={a.mini_batches} parts of whole prompt groups")
        if r.temperature < 0 or not 0 < r.top_p <= 1 or r.top_k < 0:
            raise ConfigError(f"rollout sampling settings out of range: temperature={r.temperature} (>= 0), "
                              f"top_p={r.top_p} (0 < p <= 1), top_k={r.top_k} (>= 0)")
        if r.tis_cap < 0 or not 0 < r.vllm_gpu_memory_utilization < 1:
            raise ConfigError(f"rollout.tis_cap must be >= 0 (got {r.tis_cap}) and rollout.vllm_gpu_memory_utilization "
                              f"in (0, 1) (got {r.vllm_gpu_memory_utilization})")
        if not 0 <= a.gamma <= 1:
            raise ConfigError(f"algo.gamma must be in [0, 1] (got {a.gamma})")
        unsharded = [k for k, on in [("model.lora.r > 0", self.model.lora.r > 0), ("sft.steps > 0", self.sft.steps > 0),
                                      ("rollout.engine=vllm", r.engine == "vllm")] if on]
        if self.train.fsdp_sampling == "sharded" and self.algo.filter_groups:  # ranks would sample unequal rounds
            raise ConfigError("train.fsdp_sampling=sharded does not support algo.filter_groups (every rank must sample "
                              "in lockstep); use train.fsdp_sampling=gathered or turn filter_groups off")
        if self.train.parallel == "fsdp" and unsharded:  # each would need the whole model on one device
            raise ConfigError(f"train.parallel=fsdp does not support {' or '.join(unsharded)}; change it or use "
                              f"train.parallel=ddp")
        if self.data.eval_fraction and not 0 < self.data.eval_fraction < 1:
            raise ConfigError(f"data.eval_fraction must be in (0, 1) (got {self.data.eval_fraction})")
        e = self.env
        if e.max_turns < 1 or e.max_tokens < 1:
            raise ConfigError(f"env.max_turns and env.max_tokens must be >= 1 (got {e.max_turns}, {e.max_tokens})")
        if e.cls and self.train.fsdp_sampling == "sharded":  # episodes take as many turns as they need, per rank
            raise ConfigError("env.cls (multi-turn episodes) does not support train.fsdp_sampling=sharded (every rank "
                              "would have to decode in lockstep); use train.fsdp_sampling=gathered")
        if self.rewards.overlap and r.engine != "rlft":
            raise ConfigError(f"rewards.overlap needs rlft's own sampler (rollout.engine=rlft, got {r.engine!r}): only "
                              f"it reports rows as they finish")
        for name in self.log.report_to:
            if name not in TRACKERS:
                near = difflib.get_close_matches(str(name), TRACKERS, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"log.report_to names {name!r}, which is not a tracker{hint}; valid: "
                                  f"{', '.join(TRACKERS)}")
        for i, spec in enumerate(self.rewards.components):
            if not spec.fn:
                raise ConfigError(f"rewards.components[{i}].fn is empty: name a reward (e.g. fn: bleu)")


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<top>'} must be a mapping, got {raw!r}")
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            full = prefix + str(key)
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix + near[0]}?" if near else f"; valid keys here: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, prefix + key, fields[key])
    return cls(**kwargs)


def _coerce(tp, value, key: str, f: dataclasses.Field):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if key == "rewards.components":
        if not isinstance(value, list):
            raise ConfigError(f"config key {key} must be a list of rewards, got {value!r}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                item = {"fn": item}
            out.append(_build(RewardSpec, item, f"{key}[{i}]."))
        return out
    origin = typing.get_origin(tp)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(origin or tp)
    if ok is None and (origin in (typing.Union, types.UnionType)):
        ok = lambda v: True  # noqa: E731
    if tp is str and isinstance(value, bool) and {"on", "off"} <= set(f.metadata.get("choices") or ()):
        value = "on" if value else "off"  # YAML 1.1 reads `off` / `on` as booleans
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-5` as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if ok is not None and not ok(value):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"config key {key} = {value!r} has type {type(value).__name__}; expected {name}")
    if tp is float:
        value = float(value)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"config key {key} = {value!r} is not one of {', '.join(map(str, choices))}{hint}")
    return value


class KeyDoc(typing.NamedTuple):
    """One config key for ``rlft config-help``: its default, documentation, allowed values (empty: any value of
    its type) and when it applies (empty: always)."""

    key: str
    default: str
    doc: str
    choices: tuple
    applies: str


def describe(cls=Config, prefix: str = "") -> list[KeyDoc]:
    """Every config key, in declaration order: what ``rlft config-help`` prints."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], key + ".")
            continue
        when = next((f"applies only {r.when}" for r in APPLIES if key in r.keys), "")
        rows.append(KeyDoc(key, repr(_default_of(f)), f.metadata.get("doc", ""), f.metadata.get("choices") or (),
                           when))
    return rows


# ------------------------------------------------------------------------------ keys that apply only sometimes

APPLIES_NOTE = ("A key marked 'applies only ...' set in your YAML or a key=value override to a value other than its "
                "default, where it does not apply, is an error (it would do nothing). Set by a task preset, it is "
                "dropped instead: the loaded and saved config holds its default.")


@dataclass(frozen=True)
class Applies:
    """``keys`` take effect only when ``test(cfg)`` holds: ``when`` says so in words, ``got`` what the config
    holds instead, ``fix`` what would make them apply."""

    keys: tuple[str, ...]
    test: Callable[[Config], bool]
    when: str
    got: Callable[[Config], str]
    fix: str


def _est(name: str) -> Applies:
    return Applies((), lambda c: c.algo.estimator == name, f"to algo.estimator={name}",
                   lambda c: f"algo.estimator={c.algo.estimator}", f"set algo.estimator={name}")


def _on(keys: tuple[str, ...], rule: Applies) -> Applies:
    return dataclasses.replace(rule, keys=keys)


def _vllm(keys: tuple[str, ...]) -> Applies:
    return Applies(keys, lambda c: c.rollout.engine == "vllm", "with rollout.engine=vllm",
                   lambda c: f"rollout.engine={c.rollout.engine}", "set rollout.engine=vllm")


# Read off the code that uses each key (rlft/train.py and the modules it calls). Not here: rollout.top_k / top_p
# at temperature 0 (`rlft eval --temperature` samples with the saved config's top_k / top_p), optim.share_prompts
# (it depends on the model family, known only once the model is loaded), train.eval_max_prompts without an eval
# split (also read by task evaluation helpers), train.parallel (it depends on the number of processes).
# rewards.overlap with a sampler other than rlft's stays an error in `validate` whoever set it (no preset sets it).
APPLIES: tuple[Applies, ...] = (
    _on(("algo.scale",), _est("grpo")),
    _on(("algo.baseline",), _est("reinforce")),
    Applies(("algo.ema_decay",), lambda c: c.algo.estimator == "reinforce" and c.algo.baseline == "ema",
            "to algo.estimator=reinforce with algo.baseline=ema",
            lambda c: f"algo.estimator={c.algo.estimator}, algo.baseline={c.algo.baseline}",
            "set algo.estimator=reinforce and algo.baseline=ema"),
    _on(("algo.group_baseline",), _est("reinforce_pp")),
    _on(("algo.value_coef",), _est("value")),
    Applies(("algo.max_filter_rounds",), lambda c: c.algo.filter_groups, "with algo.filter_groups=true",
            lambda c: "algo.filter_groups=false", "set algo.filter_groups=true"),
    Applies(("algo.kl_estimator", "algo.kl_in"), lambda c: c.algo.kl_coef > 0,
            "with algo.kl_coef > 0 (with 0 there is no reference model and no KL)",
            lambda c: f"algo.kl_coef={c.algo.kl_coef}", "set algo.kl_coef > 0"),
    # with one pass of one optimizer step the "old" log-probs are the current ones: the ratio is exactly 1 and
    # nothing is clipped. rollout.engine=vllm does not change that: vLLM's log-probs enter through rollout.tis_cap.
    Applies(("algo.eps_low", "algo.eps_high"), lambda c: c.algo.num_iterations > 1 or c.algo.mini_batches > 1,
            "when the ratio can differ from 1: algo.num_iterations > 1 or algo.mini_batches > 1",
            lambda c: f"algo.num_iterations={c.algo.num_iterations}, algo.mini_batches={c.algo.mini_batches}",
            "raise algo.num_iterations or algo.mini_batches"),
    _vllm(("rollout.tis_cap", "rollout.vllm_gpu_memory_utilization", "rollout.vllm_sleep")),
    Applies(("rollout.decode",), lambda c: c.rollout.engine == "rlft", "with rollout.engine=rlft (its own decode "
            "loop)", lambda c: f"rollout.engine={c.rollout.engine}", "set rollout.engine=rlft"),
    Applies(("train.fsdp_offload", "train.fsdp_sampling"), lambda c: c.train.parallel == "fsdp",
            "with train.parallel=fsdp", lambda c: f"train.parallel={c.train.parallel}", "set train.parallel=fsdp"),
    Applies(("model.forced_bos_token",), lambda c: c.model.kind != "causal",
            "to encoder-decoder models (model.kind=seq2seq, or auto on an encoder-decoder checkpoint)",
            lambda c: "model.kind=causal", "set model.kind=seq2seq or auto"),
    Applies(("model.lora.alpha", "model.lora.dropout", "model.lora.target_modules", "model.lora.save_merged"),
            lambda c: c.model.lora.r > 0, "with model.lora.r > 0 (LoRA on)", lambda c: "model.lora.r=0",
            "set model.lora.r > 0"),
    Applies(("sft.lr", "sft.batch_size", "sft.warmup_steps"), lambda c: c.sft.steps > 0,
            "with sft.steps > 0 (a supervised warm start)", lambda c: "sft.steps=0", "set sft.steps > 0"),
    Applies(("data.eval_fraction",), lambda c: not c.data.eval, "when data.eval is empty (it splits the eval set "
            "off data.train)", lambda c: f"data.eval={c.data.eval}", "remove data.eval"),
    Applies(("data.system",), lambda c: c.model.chat_template != "off",
            "with a chat template (model.chat_template auto or on)", lambda c: "model.chat_template=off",
            "set model.chat_template=auto or on"),
    Applies(("train.eval_every",), lambda c: bool(c.data.eval) or c.data.eval_fraction > 0,
            "with an eval split (data.eval or data.eval_fraction > 0)",
            lambda c: "no data.eval and data.eval_fraction=0",
            "set data.eval or data.eval_fraction"),
    # env.args / env.max_turns / env.max_tokens are not here: the environment may come from Python
    # (train(cfg, env=...)), which the config cannot see; build_run rejects them when there is no environment.
    Applies(("rewards.overlap",), lambda c: not c.env.cls, "to single-turn sampling (no env.cls): an episode's "
            "rewards are scored once it has ended", lambda c: f"env.cls={c.env.cls}", "remove env.cls"),
    Applies(("log.num_samples",), lambda c: c.log.samples_every > 0, "with log.samples_every > 0",
            lambda c: "log.samples_every=0", "set log.samples_every > 0"),
)


def _check_applies(cfg: Config, user: dict) -> None:
    """A key that does not apply: an error when the user set it to a non-default value; held at its default
    either way (a preset's setting for another estimator, engine, ... is dropped)."""
    idle = [rule for rule in APPLIES if not rule.test(cfg)]  # all tested before any key is reset
    for rule in idle:
        for key in rule.keys:
            default, value = _default_of(_field_of(key)), _get(cfg, key)
            if value != default and _user_set(user, key):
                raise ConfigError(f"{key}={_show(value)} applies only {rule.when} (got {rule.got(cfg)}); remove "
                                  f"it or {rule.fix}")
            _set(cfg, key, default)


def _field_of(key: str) -> dataclasses.Field:
    cls = Config
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return _fields(cls)[name]


def _default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _get(cfg: Config, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _set(cfg: Config, key: str, value) -> None:
    *sections, name = key.split(".")
    node = cfg
    for part in sections:
        node = getattr(node, part)
    setattr(node, name, value)


def _user_set(raw: dict, key: str) -> bool:
    """Whether the user's own mapping (before any preset) holds ``key``."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _show(value) -> str:
    """A value as it would be written in a ``key=value`` override."""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) and value else repr(value)
