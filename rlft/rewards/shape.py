"""Shape and constraint rewards: length, DAPO's overlong penalty, repetition, diversity within a group, keywords,
regex format, JSON validity. Cheap (microseconds per sample); no reference needed.

Lengths are counted in ``unit``: ``words`` (``str.split``), ``chars``, or ``tokens`` -- the entries of
``completion_ids[i]`` exactly as the trainer passes them (the trainer passes ``completion_ids`` to every reward
whose signature names it).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache

from .base import register

UNITS = ("words", "chars", "tokens")


def _units(reward: str, completions, completion_ids, unit: str) -> list[list]:
    if unit == "words":
        return [c.split() for c in completions]
    if unit == "chars":
        return [list(c) for c in completions]
    if unit == "tokens":
        if completion_ids is None:
            raise ValueError(f"reward {reward!r}: unit 'tokens' needs completion_ids (the trainer passes them; "
                             f"called directly, pass completion_ids=...)")
        if len(completion_ids) != len(completions):
            raise ValueError(f"reward {reward!r}: {len(completion_ids)} completion_ids for "
                             f"{len(completions)} completions")
        return [list(ids) for ids in completion_ids]
    raise ValueError(f"reward {reward!r}: unit must be one of {', '.join(UNITS)}, got {unit!r}")


def _ngrams(seq: list, n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@register("length", strict_args=True)
def length(prompts, completions, completion_ids=None, *, target: int | None = None, min_length: int | None = None,
           max_length: int | None = None, unit: str = "words", scale: float | None = None, **_):
    """0 inside the allowed lengths, falling linearly to -1 outside. Range [-1, 0].

    Allowed: ``[min_length, max_length]`` (either side may be open), or exactly ``target``. Outside, with ``d``
    the distance to the nearest allowed length and ``s = scale`` (default: that bound, at least 1):
    ``-min(1, d / s)``. Example: ``min_length: 10, max_length: 20``; 25 words -> -5/20 = -0.25; 5 words ->
    -5/10 = -0.5; 60 words -> -1.
    """
    if target is not None:
        if min_length is not None or max_length is not None:
            raise ValueError("reward 'length': give target, or min_length / max_length, not both")
        min_length = max_length = target
    if min_length is None and max_length is None:
        raise ValueError("reward 'length': set target, min_length or max_length")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise ValueError(f"reward 'length': min_length {min_length} > max_length {max_length}")
    out = []
    for u in _units("length", completions, completion_ids, unit):
        n = len(u)
        if min_length is not None and n < min_length:
            d, bound = min_length - n, min_length
        elif max_length is not None and n > max_length:
            d, bound = n - max_length, max_length
        else:
            out.append(0.0)
            continue
        out.append(-min(1.0, d / (scale if scale is not None else max(1, bound))))
    return out


@register("overlong", strict_args=True)
def overlong(prompts, completions, completion_ids, *, max_length: int, cache_length: int, **_):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), on the token count L of each completion::

        0                                     if L <= max_length - cache_length
        (max_length - cache_length - L) / cache_length   if max_length - cache_length < L <= max_length
        -1                                    if L > max_length

    Range [-1, 0]. ``max_length`` is the hard limit (usually ``max_new_tokens``), ``cache_length`` the width
    of the ramp before it. Example: max 20, cache 4: 16 tokens -> 0, 18 -> -0.5, 20 -> -1.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"reward 'overlong': need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    start = max_length - cache_length
    out = []
    for ids in _units("overlong", completions, completion_ids, "tokens"):
        n = len(ids)
        out.append(0.0 if n <= start else (start - n) / cache_length if n <= max_length else -1.0)
    return out


@register("repetition", strict_args=True)
def repetition(prompts, completions, completion_ids=None, *, n: int = 3, unit: str = "words", **_):
    """Minus the fraction of repeated n-grams in a completion: ``-(1 - unique / total)`` over its n-grams
    (0 when it has fewer than n units). Range (-1, 0]. Example: ``a b a b a b`` with n=2 has 5 bigrams, 2
    distinct -> -(1 - 2/5) = -0.6."""
    out = []
    for u in _units("repetition", completions, completion_ids, unit):
        grams = _ngrams(u, n)
        out.append(-(1 - len(set(grams)) / len(grams)) if grams else 0.0)
    return out


def _groups(prompts, group_size: int | None) -> list[range]:
    """Consecutive samples that share a prompt: fixed chunks of ``group_size``, or (None) runs of equal prompts."""
    n = len(prompts)
    if group_size is not None:
        if group_size < 1 or n % group_size:
            raise ValueError(f"group_size {group_size} does not divide the batch of {n} completions")
        return [range(s, s + group_size) for s in range(0, n, group_size)]
    out, start = [], 0
    for i in range(1, n + 1):
        if i == n or prompts[i] != prompts[start]:
            out.append(range(start, i))
            start = i
    return out


@register("distinct", strict_args=True)
def distinct(prompts, completions, completion_ids=None, *, n: int = 2, unit: str = "words",
             group_size: int | None = None, **_):
    """distinct-n of each group (Li et al. 2016): distinct n-grams / all n-grams over the group's completions,
    given to every member (0 if the group has no n-gram). Range [0, 1].

    Groups: consecutive ``group_size`` samples, or by default runs of consecutive equal prompts (the trainer
    orders the ``num_generations`` samples of a prompt together; set ``group_size`` if equal prompts can be
    neighbours in the dataset). The value is the same within a group, so group baselines (rloo, grpo) cancel
    it: use it to log diversity, or with a batch baseline; ``novelty`` gives a per-sample signal.
    """
    units = _units("distinct", completions, completion_ids, unit)
    out = [0.0] * len(completions)
    for g in _groups(prompts, group_size):
        grams = [x for i in g for x in _ngrams(units[i], n)]
        v = len(set(grams)) / len(grams) if grams else 0.0
        for i in g:
            out[i] = v
    return out


@register("novelty", strict_args=True)
def novelty(prompts, completions, completion_ids=None, *, n: int = 2, unit: str = "words",
            group_size: int | None = None, **_):
    """Per-sample diversity within its group: the fraction of a completion's n-grams that no other completion
    of the group contains (0 with no n-gram). Range [0, 1]. Groups as in ``distinct``. Example: group
    ``a b c`` / ``a b d`` with n=2: bigrams {ab, bc} and {ab, bd}: each has 1 of 2 new -> 0.5, 0.5."""
    units = _units("novelty", completions, completion_ids, unit)
    out = [0.0] * len(completions)
    for g in _groups(prompts, group_size):
        grams = {i: _ngrams(units[i], n) for i in g}
        counts = Counter(x for i in g for x in set(grams[i]))  # in how many completions each n-gram occurs
        for i in g:
            mine = grams[i]
            out[i] = sum(counts[x] == 1 for x in mine) / len(mine) if mine else 0.0
    return out


def _keyword_list(v, where: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    v = list(v)
    if not all(isinstance(x, str) for x in v):
        raise ValueError(f"reward 'keywords': {where} must be strings")
    return v


@lru_cache(maxsize=4096)
def _keyword_re(word: str, case_sensitive: bool, whole_word: bool) -> re.Pattern:
    body = re.escape(word)
    if whole_word:  # not inside a longer word; works for keywords that start or end with punctuation too
        body = rf"(?<!\w){body}(?!\w)"
    return re.compile(body, 0 if case_sensitive else re.IGNORECASE)


def _keywords_needs(args: dict) -> list[str]:
    return [args[k] for k in ("required_column", "forbidden_column") if args.get(k)]


@register("keywords", strict_args=True)
def keywords(prompts, completions, *, required=(), forbidden=(), required_column: str | None = None,
             forbidden_column: str | None = None, case_sensitive: bool = False, whole_word: bool = True, **columns):
    """``found(required) / len(required) - found(forbidden) / len(forbidden)`` (a term is 0 when its list is
    empty); ``None`` for a row with no keyword at all. Range [-1, 1].

    ``required`` / ``forbidden``: keywords for every row; ``required_column`` / ``forbidden_column`` name a
    dataset column with each row's own keywords (a string or a list), added to the shared ones. Matching is
    case-insensitive and whole-word by default (``whole_word: false`` for scripts without spaces, e.g. CJK).
    """
    req_rows = columns[required_column] if required_column else None
    forb_rows = columns[forbidden_column] if forbidden_column else None
    shared_req, shared_forb = _keyword_list(required, "required"), _keyword_list(forbidden, "forbidden")
    out = []
    for i, c in enumerate(completions):
        req = shared_req + (_keyword_list(req_rows[i], required_column) if req_rows is not None else [])
        forb = shared_forb + (_keyword_list(forb_rows[i], forbidden_column) if forb_rows is not None else [])
        if not req and not forb:
            out.append(None)
            continue
        found_req = sum(bool(_keyword_re(w, case_sensitive, whole_word).search(c)) for w in req)
        found_forb = sum(bool(_keyword_re(w, case_sensitive, whole_word).search(c)) for w in forb)
        out.append((found_req / len(req) if req else 0.0) - (found_forb / len(forb) if forb else 0.0))
    return out


keywords.needs_columns = _keywords_needs


_MODES = ("fullmatch", "match", "search")


@lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"reward 'regex': bad pattern {pattern!r}: {e}") from e


@register("regex", strict_args=True)
def regex(prompts, completions, *, pattern: str, mode: str = "fullmatch", ignore_case: bool = False,
          dotall: bool = True, strip: bool = True, **_):
    """1.0 if the completion matches ``pattern`` (Python ``re``), else 0.0. ``mode``: ``fullmatch`` (the whole
    completion, default), ``match`` (at the start), ``search`` (anywhere). ``dotall``: ``.`` matches newlines
    (default on); ``strip``: strip surrounding whitespace first. Example: a reasoning format
    ``pattern: "<think>.*?</think>\\s*<answer>.*?</answer>"``."""
    if mode not in _MODES:
        raise ValueError(f"reward 'regex': mode must be one of {', '.join(_MODES)}, got {mode!r}")
    rx = _compile(pattern, (re.IGNORECASE if ignore_case else 0) | (re.DOTALL if dotall else 0))
    test = getattr(rx, mode)
    return [float(test(c.strip() if strip else c) is not None) for c in completions]


_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


@register("json_valid", strict_args=True)
def json_valid(prompts, completions, *, extract: bool = False, keys=(), require_object: bool = False, **_):
    """1.0 if the completion parses as JSON (``json.loads`` after stripping), else 0.0.

    ``extract``: parse the first fenced code block (```json ... ```) when there is one. ``require_object``:
    the value must be a JSON object; ``keys``: ... that has these top-level keys (implies ``require_object``).
    """
    keys = _keyword_list(keys, "keys")
    out = []
    for c in completions:
        text = c
        if extract and (m := _FENCE.search(c)):
            text = m.group(1)
        try:
            value = json.loads(text.strip())
        except (ValueError, RecursionError):
            out.append(0.0)
            continue
        if (require_object or keys) and not isinstance(value, dict):
            out.append(0.0)
        else:
            out.append(float(all(k in value for k in keys)))
    return out
