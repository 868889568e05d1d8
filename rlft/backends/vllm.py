"""Rollouts from vLLM in the training process (``rollout.engine: vllm``; the ``vllm`` extra; a CUDA GPU).

One engine per run, beside the trainer's model on the same GPU (``rollout.vllm_gpu_memory_utilization`` of its
memory). It samples from token-id prompts and returns the same `Rollout` as rlft's sampler; after every optimizer
update the policy's weights (LoRA merged in) are loaded into vLLM's model in place. Choices, and why:

* vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the weights reach its model as tensors
  (``LLM.apply_model``), with no copy through another process;
* ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2) makes the sampled token's log-prob the one at the
  sampling temperature, which is what rlft's loss computes. With top-k / top-p it is also renormalised over the
  tokens kept, whereas rlft's own sampler reports the log-prob before them: the TIS weight then also corrects
  for the truncation (rlft/loss.py);
* the prefix cache is reset after each weight update: it holds keys and values computed with the old weights;
* vLLM's log-probs are not the trainer's (other kernels, precision), so the loss reweights each token by the
  truncated ratio of the two (``rollout.tis_cap``, rlft/loss.py);
* vLLM seeds its sampling from ``train.seed`` once; a run is not bitwise reproducible (batching changes numerics),
  and the ``generator`` rlft's sampler draws from is not used.
"""

from __future__ import annotations

import os
import re

import torch

from ..config import Config
from ..errors import ConfigError
from ..policy import is_lora, unwrap
from ..sampling import Finisher, Rollout, SamplingParams
from .base import Causal

INSTALL = "pip install 'rlft[vllm]'"


def check(cfg: Config, world: int = 1) -> None:
    """Fail before any model is loaded when vLLM cannot run here; the message says what to do."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"rollout.engine=vllm needs vLLM, which is not installed ({e}): {INSTALL} on a machine "
                          f"with a CUDA GPU, or use rollout.engine=rlft") from None
    if not torch.cuda.is_available():
        raise ConfigError("rollout.engine=vllm needs a CUDA GPU and none is visible; use rollout.engine=rlft here")
    if world > 1:
        raise ConfigError(f"rollout.engine=vllm runs in one process in this version (got {world} under torchrun); "
                          f"launch without torchrun or use rollout.engine=rlft")


class VLLM(Causal):
    """A decoder-only model whose rollouts come from a vLLM ``LLM`` holding the policy's current weights: `sample`
    generates there, `after_update` loads the new weights, `before_update` frees vLLM's GPU memory until then (with
    ``rollout.vllm_sleep``). Log-probs for the loss are the trainer's own (`Causal.logprobs`)."""

    def __init__(self, model, tokenizer, eos_ids, cfg: Config, world: int = 1):
        super().__init__(model, tokenizer, eos_ids)
        check(cfg, world)
        if model.config.is_encoder_decoder:
            raise ConfigError("rollout.engine=vllm supports decoder-only models; use rollout.engine=rlft for "
                              "encoder-decoder ones")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core and model in this process
        from vllm import LLM

        m, r = cfg.model, cfg.rollout
        # the architecture and tokenizer come from model.path; the weights are the policy's, pushed below (they
        # differ from model.path after a warm start, on resume, and with LoRA)
        self.llm = LLM(model=m.path, tokenizer=m.tokenizer or m.path, revision=m.revision or None,
                       trust_remote_code=m.trust_remote_code, dtype=m.dtype, seed=cfg.train.seed,
                       gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                       max_model_len=cfg.data.max_prompt_tokens + r.max_new_tokens,
                       logprobs_mode="processed_logprobs", enable_sleep_mode=r.vllm_sleep)
        self.use_sleep, self.sleeping = r.vllm_sleep, False
        self.after_update()

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, *,
               generator=None, on_done=None) -> Rollout:
        """One completion per row of ``prompt_ids`` ([N, P], left-padded), as rlft's sampler returns it.
        ``generator`` is not used (vLLM seeds itself from train.seed)."""
        from vllm import SamplingParams as VParams
        from vllm import TokensPrompt

        eos = list(self.eos_ids)
        prompts = [TokensPrompt(prompt_token_ids=[x for x, keep in zip(row, m) if keep])
                   for row, m in zip(prompt_ids.tolist(), prompt_mask.tolist())]
        vp = VParams(n=1, temperature=params.temperature, top_k=params.top_k if params.top_k > 0 else -1,
                     top_p=params.top_p, max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
                     stop_token_ids=eos or None, ignore_eos=not eos, logprobs=0)  # logprobs=0: the sampled token's
        seqs, logps, by_stop = [], [], []
        for out in self.llm.generate(prompts, vp, use_tqdm=False):
            c = out.outputs[0]
            seqs.append(list(c.token_ids))
            logps.append([pos[tok].logprob for pos, tok in zip(c.logprobs, c.token_ids)])
            by_stop.append(isinstance(c.stop_reason, str))  # a stop string (an int: a stop token; None: EOS)
        return to_rollout(self.tokenizer, prompt_ids, prompt_mask, seqs, logps, by_stop, eos, params.stop)

    def before_update(self) -> None:
        """Free vLLM's weights and KV cache on the GPU for the update (level 2: the weights are reloaded anyway)."""
        if self.use_sleep and not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = True

    def after_update(self) -> None:
        """Load the policy's current weights into vLLM's model, in place (its CUDA graphs stay valid)."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])  # the weights first, so the KV cache is not held meanwhile
        # in this process the model's load_weights reads the pairs as they are produced
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(policy_weights(self.model)))
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()  # cached keys / values were computed with the old weights


def policy_weights(model):
    """The policy's weights as (name, tensor) pairs under the names of its transformers checkpoint (what vLLM's
    ``load_weights`` reads), one at a time: the tensors themselves, no copies.

    With LoRA: each adapted weight plus its adapters' delta, computed beside the model when it is reached, so only
    one merged matrix exists at a time (merging into the weights and unmerging again would also leave rounding
    drift in bf16 base weights every step)."""
    base = unwrap(model)
    adapted = {}
    if is_lora(model):
        from peft.tuners.lora import LoraLayer

        adapted = {f"{name}.weight": mod for name, mod in base.named_modules() if isinstance(mod, LoraLayer)}
    for name, t in base.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name.replace(".base_layer.", "."))
        mod = adapted.get(name)
        if mod is not None:
            active = [a for a in mod.active_adapters if a in mod.lora_A or a in mod.lora_embedding_A]
            with torch.no_grad():
                t = t + sum(mod.get_delta_weight(a) for a in active).to(t.dtype) if active else t
        yield name, t


def to_rollout(tokenizer, prompt_ids, prompt_mask, seqs: list[list[int]], logps: list[list[float]],
               by_stop: list[bool], eos: list[int], stop) -> Rollout:
    """A `Rollout` from the sampled token ids and their log-probs, one list per row, cut as rlft's sampler cuts
    (`rlft.sampling.finish`): after the first EOS (kept, finish ``eos``); ``by_stop`` rows ended at a stop string
    (kept in the tokens, cut from the text); the rest ran to the length limit."""
    n, pad = len(seqs), tokenizer.pad_token_id
    width = max([1] + [len(x) for x in seqs])
    tokens = torch.full((n, width), pad, dtype=torch.long)     # [N, T]
    lp = torch.zeros((n, width))                               # [N, T]
    for i, (x, lps) in enumerate(zip(seqs, logps)):
        tokens[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        lp[i, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
    drawn = torch.tensor([len(x) for x in seqs])
    stop_len = torch.where(torch.tensor(by_stop, dtype=torch.bool), drawn, 0)
    dev = prompt_ids.device
    fin = Finisher(tokenizer, torch.tensor(eos, dtype=torch.long, device=dev), tuple(stop), pad)
    return fin(prompt_ids, prompt_mask, tokens.to(dev), lp.to(dev), stop_len.to(dev), drawn.to(dev))
