"""Prompt datasets: rows from JSONL / JSON / CSV / TSV / Parquet files or a `datasets` folder (``save_to_disk``),
a seeded order that a resumed run continues exactly.

A row is a ``Row``: its line in the file and its columns. ``data.columns`` first adds columns under new names
(``{prompt: question}``); then the prompt column becomes the prompt (through ``data.template`` for base models, or
the chat template for chat models) and every other column travels with it to the rewards as a keyword. A column
the config needs that the file does not have at all is an error naming the file's columns and the config key to
set; a row that cannot be used is an error naming the file and line (row, for Parquet and `datasets`), or is
skipped and counted (``data.bad_rows: skip``).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import DataConfig
from .errors import ConfigError, DataError

TEXT_FORMATS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class Row:
    """One dataset row."""

    line: int       # its line in a text file (a CSV's header is line 1), else its row number from 1
    columns: dict   # column name -> value, as read (after data.columns is applied, in check_rows)


def where(path, n: int) -> str:
    """``file, line 3`` for text formats, ``file, row 3`` for Parquet and `datasets` folders."""
    unit = "line" if Path(path).suffix.lower() in TEXT_FORMATS else "row"
    return f"{path}, {unit} {n}"


# ------------------------------------------------------------------------------------------- reading

def read_rows(path: str | Path, bad_rows: str = "error", counts: dict | None = None) -> list[Row]:
    """All rows of a .jsonl / .json / .csv / .tsv / .parquet file or a `datasets` folder. Bad rows raise (naming
    file and line) or are skipped and counted in ``counts['bad_rows']``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    counts = counts if counts is not None else {}

    def bad(line: int, why: str):
        if bad_rows == "error":
            raise DataError(f"{where(path, line)}: {why} (set data.bad_rows=skip to skip such rows)")
        counts["bad_rows"] = counts.get("bad_rows", 0) + 1

    if path.is_dir():
        return _read_saved_dataset(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".tsv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unknown dataset format {suffix!r} (use .jsonl, .json, .csv, .tsv, .parquet or a "
                        f"folder written by datasets' save_to_disk)")
    return readers[suffix](path, bad)


def _read_jsonl(path: Path, bad: Callable[[int, str], None]) -> list[Row]:
    rows = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad(i, f"not valid UTF-8 (byte {e.start + 1})")
            continue
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
        rows.append(Row(i, row))
    return rows


def _read_json(path: Path, bad: Callable[[int, str], None]) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start + 1})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json dataset must be a list of objects (or use .jsonl, one object a line)")
    rows = []
    for i, row in enumerate(data, 1):
        if isinstance(row, dict):
            rows.append(Row(i, row))
        else:
            bad(i, f"item {i} is {type(row).__name__}, expected an object")
    return rows


def _read_csv(path: Path, bad: Callable[[int, str], None]) -> list[Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is not a column name
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    rows = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a quote left open: nothing after it can be read
            raise DataError(f"{path}, line {reader.line_num}: {e}") from None
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):  # too many fields, or too few
            extra = row.pop(None, None)
            n = len(reader.fieldnames) + len(extra) if extra else sum(v is not None for v in row.values())
            bad(line, f"has {n} fields where the header has {len(reader.fieldnames)}")
            continue
        rows.append(Row(line, row))
    return rows


def _read_parquet(path: Path, bad: Callable[[int, str], None]) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'rlft[data]')") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    return [Row(i, row) for i, row in enumerate(table.to_pylist(), 1)]


def _read_saved_dataset(path: Path) -> list[Row]:
    """A folder written by ``datasets.Dataset.save_to_disk`` (one split)."""
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(f"{path} holds several splits ({', '.join(splits)}); give one split's folder, e.g. "
                        f"{path / (splits[0] if splits else 'train')}")
    if not (path / "state.json").exists() and not (path / "dataset_info.json").exists():
        raise DataError(f"{path} is a folder but not one written by datasets' save_to_disk (no state.json)")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a datasets folder needs datasets (pip install 'rlft[data]')") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 -- datasets / pyarrow raise several types for a broken folder
        raise DataError(f"{path}: cannot read the datasets folder ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover -- caught above by dataset_dict.json
        raise DataError(f"{path} holds several splits ({', '.join(ds)}); give one split's folder")
    return [Row(i, row) for i, row in enumerate(ds.to_list(), 1)]


# ------------------------------------------------------------------------------------------ checking

def _is_messages(v) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v)


def _is_reference(v) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(x is None or isinstance(x, str) for x in v))


def _column_missing(path, present: list[str], column: str, key: str, what: str, taken=()) -> DataError:
    """A column the config needs that no row of the file has: name the file's columns and what to set (the
    example is the file's column nearest in name, else its first one not ``taken`` by the prompt)."""
    place = "header" if Path(path).suffix.lower() in (".csv", ".tsv") else "rows"
    free = [c for c in present if c not in taken] or present
    near = difflib.get_close_matches(column, free, n=1, cutoff=0.5)
    example = near[0] if near else (free[0] if free else "question")
    return DataError(f"{path}: no column {column!r} ({what}) in the file's {place}; its columns are "
                     f"{', '.join(present) or 'none'}. Set {key} to the column that holds it (e.g. "
                     f"{key}={example}), or copy one into {column!r} with data.columns (e.g. "
                     f"data.columns={{{column}: {example}}})")


def _check_columns_exist(rows: list[Row], path, cfg: DataConfig, needs_reference: bool) -> None:
    """Columns the config names that are missing from EVERY row (for a CSV: from its header) are a file error, not
    one error per row -- skipping rows (data.bad_rows=skip) cannot help."""
    if not rows:
        return
    present = list(dict.fromkeys(k for r in rows for k in r.columns))
    after = set(present)
    for new, src in cfg.columns.items():  # in order: a mapping may copy a column an earlier one added
        if src not in after:
            raise DataError(f"{path}: data.columns copies column {src!r} into {new!r}, but the file has no column "
                            f"{src!r}; its columns are {', '.join(present) or 'none'}")
        after.add(new)
    if cfg.prompt_column not in after:
        raise _column_missing(path, present, cfg.prompt_column, "data.prompt_column", "the prompts")
    if needs_reference and cfg.reference_column not in after:
        raise _column_missing(path, present, cfg.reference_column, "data.reference_column", "the references",
                              taken={cfg.prompt_column, cfg.columns.get(cfg.prompt_column)})


def _row_problem(columns: dict, cfg: DataConfig, needs_reference: bool) -> str | None:
    """What is wrong with one row's values (after data.columns), or None."""
    p, r = columns.get(cfg.prompt_column), columns.get(cfg.reference_column)
    if p is None or p == "" or p == []:
        return f"no {cfg.prompt_column!r} value (data.prompt_column)"
    if not isinstance(p, str) and not _is_messages(p):
        return (f"the {cfg.prompt_column!r} value is a {type(p).__name__}; expected text or a list of chat "
                f"messages ({{'role': ..., 'content': ...}})")
    if needs_reference and r in (None, "", []):
        return f"no {cfg.reference_column!r} value (data.reference_column)"
    if r is not None and not _is_reference(r):
        return f"the {cfg.reference_column!r} value is a {type(r).__name__}; expected text or a list of texts"
    return None


def check_rows(rows: list[Row], path, cfg: DataConfig, counts: dict, needs_reference: bool) -> list[Row]:
    """Apply ``cfg.columns`` and check each row: a prompt (a non-empty string or a list of chat messages with
    ``role`` and ``content``), a reference (when present: a string or a list of strings; required when
    ``needs_reference``). A column missing from the whole file is one error naming the file's columns."""
    _check_columns_exist(rows, path, cfg, needs_reference)
    out = []
    for row in rows:
        columns, why = _apply_columns(row.columns, cfg.columns)
        why = why or _row_problem(columns, cfg, needs_reference)
        if why:
            if cfg.bad_rows == "error":
                raise DataError(f"{where(path, row.line)}: {why} (set data.bad_rows=skip to skip such rows)")
            counts["bad_rows"] = counts.get("bad_rows", 0) + 1
            continue
        out.append(Row(row.line, columns))
    return out


def _apply_columns(columns: dict, mapping: dict) -> tuple[dict, str | None]:
    """``data.columns`` on one row, in order: (the columns, None) or (unchanged, why not)."""
    out = columns
    for new, src in mapping.items():
        if src not in out:
            return columns, f"no column {src!r} to copy into {new!r} (data.columns)"
        out = {**out, new: out[src]}
    return out, None


def load_splits(cfg: DataConfig, seed: int, needs_reference: bool = False) -> tuple[list[Row], list[Row], dict]:
    """(train rows, eval rows, counts) from the config: a given eval file or a seeded fraction."""
    if not cfg.train:
        raise ConfigError("data.train is empty: give a .jsonl, .csv or .parquet file of prompts (or a datasets "
                          "folder)")
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
        raise DataError(f"{cfg.train}: no usable rows" + (f" ({counts['bad_rows']} bad rows skipped)"
                                                           if counts.get("bad_rows") else ""))
    return train, evals, counts


@dataclass
class PromptStream:
    """Endless seeded epochs over the rows. ``state()`` / ``load_state()`` make resume exact."""

    rows: list                 # any rows (Row, or the trainer's encoded prompts)
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

    def next(self, n: int) -> list:
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


def columns_of(rows: list[Row]) -> dict[str, list]:
    """Column lists aligned with ``rows`` (the keywords rewards receive); a row without a column gives None."""
    keys: list[str] = []
    for r in rows:
        for k in r.columns:
            if k not in keys:
                keys.append(k)
    return {k: [r.columns.get(k) for r in rows] for k in keys}
