"""Embedding similarity: the cosine similarity between a completion and its reference (or a fixed target text),
embedded by a sentence-transformers model from a local folder or hub id. Needs the optional extra ``embed``
(``pip install 'rlft[embed]'``), imported only when the reward is used."""

from __future__ import annotations

import threading

from .base import register
from .text import _rows

_LOCK = threading.Lock()
_MODELS: dict[tuple, object] = {}


def load_embedder(path: str, device: str):
    """A ``SentenceTransformer`` for ``path`` on ``device``, loaded once."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("reward 'embedding' needs sentence-transformers: pip install 'rlft[embed]'") from e
    with _LOCK:
        if (path, device) not in _MODELS:
            _MODELS[path, device] = SentenceTransformer(path, device=device)
        return _MODELS[path, device]


def _needs(args: dict) -> list[str]:
    return [] if args.get("target") is not None else ["reference"]


@register("embedding", strict_args=True)
def embedding(prompts, completions, reference=None, *, path: str, target: str | list[str] | None = None,
              device: str | None = None, batch_size: int = 32, on_missing: str = "raise", **_):
    """``cos(embed(completion), embed(reference))``, the best over several references; with ``target`` (a text
    or a list of texts) the completion is compared with that instead of the ``reference`` column. Range [-1, 1]
    (in practice mostly [0, 1] for sentence embeddings). A row without reference raises, naming it (or gives
    ``None`` with ``on_missing: none``)."""
    import torch

    from .model import default_device

    model = load_embedder(str(path), device or default_device())
    if target is not None:
        refs = [[target] if isinstance(target, str) else list(target)] * len(completions)
    elif reference is None:
        raise ValueError("reward 'embedding': needs a 'reference' column or args.target")
    else:
        refs = [r for _i, _c, r in _rows("embedding", completions, reference, on_missing)]
    texts = sorted({t for r in refs if r is not None for t in r})
    index = {t: i for i, t in enumerate(texts)}
    enc = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    with torch.inference_mode():
        comp = model.encode(list(completions), **enc).float()   # [N, D], unit length
        ref = model.encode(texts, **enc).float() if texts else None  # [R, D]
    sims = (comp @ ref.T).tolist() if ref is not None else [[] for _ in completions]  # [N, R] cosines
    return [None if r is None else max(sims[i][index[t]] for t in r) for i, r in enumerate(refs)]


embedding.needs_columns = _needs
