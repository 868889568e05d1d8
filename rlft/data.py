"""Prompt datasets: rows from JSONL / CSV / Parquet, a seeded order that a resumed run continues exactly.

A row is a dict. The prompt column becomes the prompt (through ``data.template`` for base models, or the
chat template for chat models); every other column travels with it to the rewards as a keyword.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, DataConfig


class DataError(ValueError):
    """A dataset file or row that cannot be used; the message names the file and line."""


def read_rows(path: str | Path, bad_rows: str = "error", counts: dict | None = None) -> list[dict]:
    """All rows of a .jsonl / .json / .csv / .parquet file. Bad rows raise (naming file and line) or are
    skipped and counted in ``counts['bad_rows']``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    counts = counts if counts is not None else {}
    rows: list[dict] = []

    def bad(line: int, why: str):
        if bad_rows == "error":
            raise DataError(f"{path}, line {line}: {why} (set data.bad_rows=skip to skip such rows)")
        counts["bad_rows"] = counts.get("bad_rows", 0) + 1

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    bad(i, f"not valid JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(row, dict):
                    bad(i, f"expected a JSON object, got {type(row).__name__}")
                    continue
                row["_line"] = i
                rows.append(row)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json dataset must be a list of objects")
        for i, row in enumerate(data, 1):
            if isinstance(row, dict):
                rows.append({**row, "_line": i})
            else:
                bad(i, f"item {i} is {type(row).__name__}, expected an object")
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    bad(line, f"has {len(row) - (None in row)} fields where the header has {len(reader.fieldnames)}")
                    continue
                rows.append({**row, "_line": line})
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'rlft[data]')") from None
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            rows.append({**row, "_line": i})
    else:
        raise DataError(f"{path}: unknown dataset format {suffix!r} (use .jsonl, .json, .csv or .parquet)")
    return rows


def check_rows(rows: list[dict], path, cfg: DataConfig, counts: dict, needs_reference: bool) -> list[dict]:
    out = []
    for row in rows:
        why = None
        if cfg.prompt_column not in row or row[cfg.prompt_column] in (None, ""):
            why = f"no {cfg.prompt_column!r} value (data.prompt_column)"
        elif needs_reference and row.get(cfg.reference_column) in (None, ""):
            why = f"no {cfg.reference_column!r} value (data.reference_column)"
        if why:
            if cfg.bad_rows == "error":
                raise DataError(f"{path}, line {row['_line']}: {why} (set data.bad_rows=skip to skip such rows)")
            counts["bad_rows"] = counts.get("bad_rows", 0) + 1
            continue
        out.append(row)
    return out


def load_splits(cfg: DataConfig, seed: int, needs_reference: bool = False) -> tuple[list[dict], list[dict], dict]:
    """(train rows, eval rows, counts) from the config: a given eval file or a seeded fraction."""
    if not cfg.train:
        raise ConfigError("data.train is empty: give a .jsonl, .csv or .parquet file of prompts")
    counts: dict = {}
    train = check_rows(read_rows(cfg.train, cfg.bad_rows, counts), cfg.train, cfg, counts, needs_reference)
    if cfg.eval:
        evals = check_rows(read_rows(cfg.eval, cfg.bad_rows, counts), cfg.eval, cfg, counts, needs_reference)
    elif cfg.eval_fraction:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        k = max(1, int(round(len(train) * cfg.eval_fraction)))
        held = set(order[:k])
        evals = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
    else:
        evals = []
    if not train:
        raise DataError(f"{cfg.train}: no usable rows")
    return train, evals, counts


@dataclass
class PromptStream:
    """Endless seeded epochs over the rows. ``state()`` / ``load_state()`` make resume exact."""

    rows: list[dict]
    seed: int
    shuffle: bool = True
    epoch: int = 0
    pos: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            out.append(self.rows[self._order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._epoch_order(self.epoch)


def columns_of(rows: list[dict], exclude: tuple = ("_line",)) -> dict[str, list]:
    """Column lists aligned with ``rows`` (the keywords rewards receive)."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys and k not in exclude:
                keys.append(k)
    return {k: [r.get(k) for r in rows] for k in keys}
