"""Reward models: any ``AutoModelForSequenceClassification`` (a local folder or a hub id) scores each
(prompt, completion).

The pair is joined through the reward model's own chat template when its tokenizer has one (a user message and
an assistant message), else as the text ``prompt + completion``. Batches are right-padded: with causal models
the last real token then sees exactly what it sees unpadded, and transformers pools the rightmost non-pad token,
so a batched score equals a one-by-one forward. Models are loaded once per (path, device, dtype, revision).
"""

from __future__ import annotations

import threading

from .base import prompt_text, register

_LOCK = threading.Lock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return dtype


_MODELS: dict[tuple, tuple] = {}


def load_reward_model(path: str, device: str, dtype: str = "auto", revision: str | None = None):
    """(model, tokenizer) for ``path``, in eval mode on ``device``; cached, so every reward and every step that
    names the same model shares one copy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    key = (path, device, dtype, revision)
    with _LOCK:  # one load per key, even when two rewards ask at once
        if key in _MODELS:
            return _MODELS[key]
        try:
            tok = AutoTokenizer.from_pretrained(path, revision=revision)
            model = AutoModelForSequenceClassification.from_pretrained(path, revision=revision,
                                                                       dtype=_dtype(dtype, device))
        except OSError as e:
            raise OSError(f"reward model {path!r}: cannot load it as a sequence classifier ({e})") from e
        model.to(device).eval()
        tok.padding_side = "right"   # see the module docstring
        tok.truncation_side = "left"  # when truncating, keep the end of the completion
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(f"reward model {path!r}: its tokenizer has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if cfg.pad_token_id is None:  # transformers needs it to find the last real token of a padded row
            cfg.pad_token_id = tok.pad_token_id
            model.config.pad_token_id = tok.pad_token_id
        _MODELS[key] = model, tok
    return model, tok


def _texts(tok, prompts, completions, include_prompt: bool) -> tuple[list[str], bool]:
    """The strings to score, and whether they already hold the special tokens (a chat template adds them)."""
    if getattr(tok, "chat_template", None):
        texts = []
        for p, c in zip(prompts, completions):
            turns = list(p) if isinstance(p, list) else [{"role": "user", "content": p}]  # chat datasets: messages
            msgs = (turns if include_prompt else []) + [{"role": "assistant", "content": c}]
            texts.append(tok.apply_chat_template(msgs, tokenize=False))
        return texts, True
    return [(prompt_text(p) + c) if include_prompt else c for p, c in zip(prompts, completions)], False


def _label_index(model, label) -> int:
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(id2label):
        return label
    for i, name in id2label.items():
        if name == label:
            return i
    raise ValueError(f"reward model: no label {label!r}; its labels are {id2label}")


@register("reward_model", strict_args=True)
def reward_model(prompts, completions, label=None, *, path: str, device: str | None = None, dtype: str = "auto",
                 batch_size: int = 16, max_length: int | None = None, include_prompt: bool = True,
                 revision: str | None = None, **_):
    """The score of a sequence classifier for each (prompt, completion).

    One output (a reward model): the raw logit, unbounded. Several outputs (a classifier): the softmax
    probability of ``label`` (a name from the model's ``id2label``, e.g. ``POSITIVE``, or an index), in [0, 1];
    a dataset column named ``label`` gives each row its own label. ``include_prompt: false`` scores the
    completion alone (a sentiment classifier, say). ``max_length`` truncates from the left.
    ``device`` defaults to cuda when there is one; ``dtype: auto`` is float32 on CPU, bfloat16 on GPU.
    """
    import torch

    device = device or default_device()
    model, tok = load_reward_model(str(path), device, dtype, revision)
    num_labels = model.config.num_labels
    if num_labels > 1:
        if label is None:
            raise ValueError(f"reward model {path!r} has {num_labels} labels "
                             f"({dict(model.config.id2label)}); set args.label")
        labels = list(label) if isinstance(label, (list, tuple)) else [label] * len(completions)
        if len(labels) != len(completions):
            raise ValueError(f"reward model: {len(labels)} labels for {len(completions)} completions")
        index = [_label_index(model, x) for x in labels]

    texts, has_specials = _texts(tok, prompts, completions, include_prompt)
    trunc = dict(truncation=True, max_length=max_length) if max_length else {}
    ids = tok(texts, add_special_tokens=not has_specials, **trunc)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    scores = [0.0] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device)).logits.float()  # [b, labels]
            if num_labels == 1:
                vals = logits[:, 0]
            else:
                probs = logits.softmax(-1)
                vals = probs[torch.arange(len(rows)), torch.tensor([index[i] for i in rows])]
            for i, v in zip(rows, vals.tolist()):
                scores[i] = v
    return scores
