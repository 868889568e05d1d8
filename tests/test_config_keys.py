"""Every config key that the code's strings (error messages, docstrings, help) or comments, README.md and docs/
name -- ``algo.kl_coef``, ``rollout.vllm_*`` -- exists in the config tree (``rlft.config.describe()``), so no
message or page sends a user to a key that was renamed or removed.

A dotted name counts as a config key when it starts with a section (model, data, rollout, ...), is not part of a
longer dotted name or path (``cfg.train.steps``, ``data/train.jsonl``) and is not a file name (``train.py``).
Some such names are code, not keys: a call (``model.generate(``), an attribute of an rlft module
(``data.columns_of``) or of a real transformers model (``model.config.id2label``); those are told apart by
looking them up, not by a list.
"""

from __future__ import annotations

import importlib
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

from rlft.config import describe

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = "model|data|rollout|rewards|algo|optim|sft|train|log"
# not preceded by a word character, '.', '/' or '-': `cfg.train.steps`, `data/train.jsonl` are not key names
NAME = re.compile(rf"(?<![\w./\-])(?:{SECTIONS})\.[a-z0-9_.]+(\*|\()?")
FILE = re.compile(r"\.(py|jsonl|json|ya?ml|csv|tsv|parquet|txt|md|sqlite|pt|safetensors|html|js)$")
KEYS = {k.key for k in describe()}


def dotted_names(text: str):
    """(name, suffix) for each candidate key in ``text``; suffix is '*' (a family: rollout.vllm_*), '(' or ''."""
    for m in NAME.finditer(text):
        name = m.group(0).rstrip("*(").rstrip(".")
        if "." in name and not FILE.search(name):
            yield name, m.group(1) or ""


def is_key(name: str, suffix: str) -> bool:
    """A key, a section (model.lora) or a family of keys (rollout.vllm_*)."""
    if suffix == "*":
        return any(k.startswith(name) for k in KEYS)
    return name in KEYS or any(k.startswith(name + ".") for k in KEYS)


@cache
def tiny_model():
    from rlft.tiny import byte_tokenizer, tiny_causal_lm

    return tiny_causal_lm(byte_tokenizer(), hidden=16, layers=1, heads=2)


def is_code(name: str, suffix: str) -> bool:
    """A call, an attribute of an rlft module (data.columns_of), or of a transformers model (model.generate,
    model.config.id2label, the parameter model.layers.0.mlp.up_proj.weight)."""
    if suffix == "(":
        return True
    first, *rest = name.split(".")
    try:
        obj = importlib.import_module(f"rlft.{first}")
    except ImportError:
        obj = None
    if obj is not None and hasattr(obj, rest[0]):
        return True
    if first != "model":
        return False
    lm = tiny_model()
    if name in lm.state_dict():
        return True
    obj = lm
    for part in rest:
        obj = obj[int(part)] if part.isdigit() and hasattr(obj, "__getitem__") else getattr(obj, part, None)
        if obj is None:
            return False
    return True


def python_texts():
    """(where, text) for every string literal and comment in rlft/."""
    for path in sorted((ROOT / "rlft").rglob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT):
                yield f"{path.relative_to(ROOT)}:{tok.start[0]}", tok.string


def markdown_texts():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "tasks").glob("*.md"))]
    for path in pages:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            yield f"{path.relative_to(ROOT)}:{i}", line


def stale(texts) -> list[str]:
    return [f"{where}: {name}" for where, text in texts for name, suffix in dotted_names(text)
            if not is_key(name, suffix) and not is_code(name, suffix)]


@pytest.mark.parametrize("texts", [python_texts, markdown_texts], ids=["rlft", "docs"])
def test_every_config_key_named_exists(texts):
    found = stale(texts())
    assert not found, "config keys named that do not exist (rlft config-help lists them):\n" + "\n".join(found)


def test_the_scan_finds_keys_and_tells_code_apart():
    text = ("set algo.kl_coef > 0 or rollout.vllm_* (train.py, data/train.jsonl, cfg.train.steps); "
            "model.generate(...), data.columns_of, model.config.id2label; algo.kl_coeff and rollout.vlm_*")
    names = list(dotted_names(text))
    assert [n for n, _ in names] == ["algo.kl_coef", "rollout.vllm_", "model.generate", "data.columns_of",
                                     "model.config.id2label", "algo.kl_coeff", "rollout.vlm_"]
    assert stale([("x", text)]) == ["x: algo.kl_coeff", "x: rollout.vlm_"]
