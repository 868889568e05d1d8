"""Atomic checkpoints: model + tokenizer (save_pretrained, loadable by plain transformers), the trainer
state (optimizer, scheduler, every RNG, step, data position, estimator state) and the resolved config.

Written into a temporary folder and renamed, so a kill at any moment leaves the last good checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import torch

STATE = "trainer_state.pt"


def rng_state(generator: torch.Generator | None) -> dict:
    s = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        s["sampler"] = generator.get_state()
    try:
        import numpy as np

        s["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return s


def set_rng_state(s: dict, generator: torch.Generator | None) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    if generator is not None and "sampler" in s:
        generator.set_state(s["sampler"])
    if "numpy" in s:
        import numpy as np

        np.random.set_state(s["numpy"])


def save(out: Path, step: int, model, tokenizer, cfg, trainer_state: dict, keep: int = 0,
         extra: dict[str, torch.nn.Module] | None = None, before_rename=None, state_dict: dict | None = None) -> Path:
    """Write ``out/checkpoint-{step}`` atomically and prune to the newest ``keep`` (0 = keep all). ``state_dict``:
    the model's full weights when the model itself holds shards (FSDP, rlft/backends/fsdp.py)."""
    out = Path(out)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    for name, module in (extra or {}).items():
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    torch.save(trainer_state, tmp / STATE)
    cfg.save(tmp / "config.yaml")
    if before_rename is not None:  # more files that must land with the checkpoint, e.g. merged LoRA weights
        before_rename(tmp)
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first (a temporary folder is never a checkpoint)."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / STATE).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest(out: Path) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE, weights_only=False)


def load_extra(ckpt: Path, name: str, module: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(Path(ckpt) / f"{name}.safetensors")))
