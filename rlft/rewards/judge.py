"""An LLM judge over HTTP: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, TGI, a hosted
API) grades each completion; the number in its reply, normalised to [0, 1], is the reward.

Standard library only (urllib and a thread pool). A row whose request fails after the retries, or whose reply
holds no score, gets ``None`` (left out of the mean, 0 in the sum) and is counted; ``compute`` logs the counts as
``reward/<name>/<key>`` (see ``judge`` for the keys). The API key is read from an environment variable, sent only
in the Authorization header, and never logged or put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .base import prompt_text, register, report

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "Grade the response to the request below for helpfulness, correctness and clarity.\n\n"
    "Request:\n{prompt}\n\nResponse:\n{completion}\n\n"
    "Think briefly, then end with a line of the form 'Score: N/10', N an integer from 0 to 10."
)

_NUM = r"([-+]?\d+(?:\.\d+)?)"
_SCORE_RE = re.compile(rf"(?:score|rating|grade)\**\s*(?:is|of|=|:)?\s*\**\s*{_NUM}(?:\s*(?:/|out of)\s*{_NUM})?",
                       re.IGNORECASE)
_FRACTION_RE = re.compile(rf"{_NUM}\s*(?:/|out of)\s*{_NUM}", re.IGNORECASE)
_FIELDS_ALWAYS = {"prompt", "completion"}


def parse_score(text: str, min_score: float = 0.0, max_score: float = 10.0, score_regex: str | None = None):
    """The judge's score in ``text`` mapped to [0, 1], or ``None``.

    Looked for, in order: ``score_regex`` (its first group), the last ``Score: N`` / ``Rating: N`` (with an
    optional ``/M`` or ``out of M``), the last ``N/M``, a reply that is only a number. ``N/M`` with ``M`` other
    than ``max_score`` reads as N on [0, M]; else N on [min_score, max_score]. Out of range: ``None``.
    Examples: ``"Score: 7/10"`` -> 0.7; ``"4/5"`` with range 1..5 -> 0.75; ``"Rating: 3"`` with range 1..5 -> 0.5.
    """
    num = den = None
    if score_regex:
        m = re.search(score_regex, text, re.IGNORECASE | re.DOTALL)
        num = m.group(1) if m else None
    else:
        for rx in (_SCORE_RE, _FRACTION_RE):
            found = list(rx.finditer(text))
            if found:
                num, den = found[-1].group(1), found[-1].group(2)
                break
        else:
            stripped = text.strip().rstrip(".")
            if re.fullmatch(_NUM, stripped):
                num = stripped
    if num is None:
        return None
    x = float(num)
    lo, hi = min_score, max_score
    if den is not None and float(den) != max_score:
        lo, hi = 0.0, float(den)
    if hi <= lo or not lo <= x <= hi:
        return None
    return (x - lo) / (hi - lo)


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _needs(args: dict) -> list[str]:
    return sorted(_fields(args.get("template", DEFAULT_TEMPLATE)) - _FIELDS_ALWAYS)


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):  # several references: one per line
        return "\n".join(str(v) for v in value if v is not None)
    return "" if value is None else str(value)


class _Failure(Exception):
    def __init__(self, kind: str, detail: str, retry: bool):
        super().__init__(detail)
        self.kind, self.retry = kind, retry


def _request(url: str, body: bytes, headers: dict, timeout: float) -> str:
    """One POST; the reply's message text, or a _Failure saying what went wrong and whether to retry."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise _Failure("http_errors", f"HTTP {e.code}", retry=e.code == 429 or e.code >= 500) from None
    except TimeoutError as e:
        raise _Failure("timeouts", f"timed out after {timeout}s", retry=True) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Failure("timeouts", f"timed out after {timeout}s", retry=True) from None
        raise _Failure("connection_errors", f"cannot connect: {e.reason}", retry=True) from None
    except (ConnectionError, OSError) as e:  # reset mid-read, remote closed
        raise _Failure("connection_errors", f"connection failed: {e}", retry=True) from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Failure("bad_responses", f"not a chat completion: {raw[:120]!r}", retry=True) from None
    if not isinstance(content, str):
        raise _Failure("bad_responses", "the message content is not text", retry=True)
    return content


@register("judge", strict_args=True)
def judge(prompts, completions, *, base_url: str, model: str, template: str = DEFAULT_TEMPLATE,
          system: str | None = None, api_key_env: str | None = "OPENAI_API_KEY", min_score: float = 0.0,
          max_score: float = 10.0, score_regex: str | None = None, temperature: float = 0.0,
          max_tokens: int | None = None, timeout: float = 60.0, retries: int = 2, backoff: float = 1.0,
          concurrency: int = 8, **columns):
    """An LLM judge's score for each completion, in [0, 1]; ``None`` where the judge failed.

    ``template`` is filled with ``{prompt}``, ``{completion}``, and any dataset column by name (``{reference}``;
    a list becomes one item per line); write literal braces as ``{{`` ``}}``. ``system`` adds a system message.
    The request goes to ``{base_url}/chat/completions`` (``base_url`` like ``http://localhost:8000/v1``) with
    ``Authorization: Bearer $<api_key_env>`` when that variable is set. Scores are read by ``parse_score``.

    Each request waits at most ``timeout`` seconds per socket operation; timeouts, connection errors, HTTP 429
    and 5xx, and malformed replies are retried ``retries`` times after ``backoff * 2**attempt`` seconds (with
    jitter); other HTTP errors and replies without a score are not. Up to ``concurrency`` requests at once.
    Counts reported for the batch (``reward/<name>/<key>``): ``requests``, ``retries``, ``failures`` (rows
    scored ``None``), ``timeouts``, ``http_errors``, ``connection_errors``, ``bad_responses``,
    ``parse_failures``, ``seconds``. The same dict is kept in ``judge.last_stats``.
    """
    n = len(completions)
    for f in _fields(template) - _FIELDS_ALWAYS:
        if f not in columns:
            raise ValueError(f"reward 'judge': the template names {{{f}}}, which is not a dataset column")
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env) if api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    stats = dict.fromkeys(["requests", "retries", "failures", "timeouts", "http_errors", "connection_errors",
                           "bad_responses", "parse_failures"], 0)
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def bump(kind: str):
        with lock:
            stats[kind] += 1

    def score(i: int):
        row = {k: _text(v[i]) for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
        user = template.format_map({**row, "prompt": prompt_text(prompts[i]), "completion": completions[i]})
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        body = {"model": model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = json.dumps(body).encode()
        for attempt in range(retries + 1):
            bump("requests")
            try:
                reply = _request(url, data, headers, timeout)
            except _Failure as e:
                bump(e.kind)
                if e.retry and attempt < retries:
                    bump("retries")
                    time.sleep(backoff * 2 ** attempt * (0.5 + random.random()))
                    continue
                errors.append(f"row {i}: {e}")
                return None
            value = parse_score(reply, min_score, max_score, score_regex)
            if value is None:
                bump("parse_failures")
                errors.append(f"row {i}: no score in reply {reply[-120:]!r}")
            return value
        return None

    with ThreadPoolExecutor(max(1, min(concurrency, n))) as pool:
        out = list(pool.map(score, range(n)))
    stats["failures"] = sum(v is None for v in out)
    stats["seconds"] = time.perf_counter() - t0
    if errors:
        log.warning("judge %s at %s: %d of %d rows failed (%s)", model, url, stats["failures"], n,
                    "; ".join(errors[:3]) + (" ..." if len(errors) > 3 else ""))
    judge.last_stats = dict(stats)
    report(**stats)
    return out


judge.needs_columns = _needs
judge.last_stats = {}
