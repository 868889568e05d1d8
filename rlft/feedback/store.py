"""The feedback store: one SQLite file shared by the trainer (which writes samples and reads ratings) and the
rating server (which hands items to raters and writes their ratings), possibly in several processes at once.

Tables (schema version 1, kept in ``PRAGMA user_version``; ``MIGRATIONS`` upgrades older files in place):

* ``runs``     one row per training run that wrote samples;
* ``samples``  one completion with its prompt, run, step, group (the ``num_generations`` samples of a prompt)
               and position in the batch;
* ``items``    one question put to a rater: ``score`` one sample 1-5, or ``pair``: compare samples A and B of
               the same group. ``done`` once rated; ``lease_rater``/``lease_until`` while someone has it open;
* ``ratings``  the answers (``score`` 1-5, ``choice`` a | b | tie, an optional comment), and skips
               (``kind = 'skip'``: that rater is not shown the item again);
* ``raters``   the names raters typed in, with first and last time seen.

The hand-out rule: an item is leased to one rater at a time for ``lease_s`` seconds; while the lease holds no
one else is given it or may rate it, and once rated it is never handed out again (a partial unique index
makes a second rating of one item impossible). A lease that runs out returns the item to the pool.

Concurrency: WAL mode (readers never block the writer), one connection per thread, every write is one short
``BEGIN IMMEDIATE`` transaction (so two writers queue on the busy timeout instead of failing on a lock
upgrade), ``synchronous = FULL``: each rating is on disk once the call returns, and a killed process loses at
most the transaction it was in the middle of.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO

MAX_COMMENT = 2000   # characters
MAX_RATER = 64       # characters of a rater name
CHOICES = ("a", "b", "tie")

# One list of statements per schema version; MIGRATIONS[k] takes a file from version k to k + 1.
# Append, never edit: files written by older versions are upgraded by running the missing steps.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}')""",
        """CREATE TABLE raters (
            name TEXT PRIMARY KEY,
            created REAL NOT NULL,
            last_seen REAL NOT NULL)""",
        """CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            step INTEGER NOT NULL,
            group_id INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            completion TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('score', 'pair')),
            sample_a INTEGER NOT NULL REFERENCES samples(id),
            sample_b INTEGER REFERENCES samples(id),
            batch INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            lease_rater TEXT,
            lease_until REAL,
            created REAL NOT NULL,
            CHECK ((kind = 'score') = (sample_b IS NULL)))""",
        """CREATE TABLE ratings (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES items(id),
            rater TEXT NOT NULL REFERENCES raters(name),
            kind TEXT NOT NULL CHECK (kind IN ('score', 'pair', 'skip')),
            score INTEGER CHECK (score BETWEEN 1 AND 5),
            choice TEXT CHECK (choice IN ('a', 'b', 'tie')),
            comment TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            CHECK ((kind = 'score') = (score IS NOT NULL) AND (kind = 'pair') = (choice IS NOT NULL)))""",
        "CREATE UNIQUE INDEX ratings_one_per_item ON ratings(item_id) WHERE kind != 'skip'",
        "CREATE INDEX ratings_by_rater ON ratings(rater, id)",
        "CREATE INDEX items_pending ON items(done, batch, id)",
        "CREATE INDEX samples_by_step ON samples(run_id, step)",
    ],
]


class NotFound(LookupError):
    """No such item."""


class Conflict(RuntimeError):
    """The item is already rated, or leased to another rater."""


class Invalid(ValueError):
    """A value out of range: a score of 7, an unknown choice, a comment too long, a bad rater name."""


def check_rater(name) -> str:
    """A rater name: 1-64 printable characters (surrounding spaces removed)."""
    if not isinstance(name, str) or not name.strip():
        raise Invalid("rater name is required")
    name = name.strip()
    if len(name) > MAX_RATER:
        raise Invalid(f"rater name is longer than {MAX_RATER} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise Invalid("rater name contains control characters")
    return name


class Store:
    """The feedback database at ``path`` (created and migrated on open). Safe to share between threads:
    each thread gets its own connection. ``lease_s``: how long an item handed to a rater stays theirs."""

    def __init__(self, path, *, lease_s: float = 600.0, busy_timeout_s: float = 60.0):
        self.path = str(path)
        self.lease_s = float(lease_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- connections and transactions -------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; transactions are explicit)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            # check_same_thread=False only so that close() may close every thread's connection at the end;
            # each connection is used by the thread that opened it.
            c = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._wal(c)
            c.execute("PRAGMA synchronous = FULL")
            c.execute("PRAGMA foreign_keys = ON")
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def _wal(self, c: sqlite3.Connection) -> None:
        """Switch the file to WAL. On a new file, connections opening at once race for the exclusive lock the
        switch needs, and SQLite answers 'database is locked' at once instead of waiting on the busy timeout:
        retry until the busy timeout (once the file is in WAL mode this is a no-op)."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                c.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so concurrent writers wait on the
        busy timeout rather than failing when a read transaction tries to become a write."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several queries."""
        c = self.conn()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def schema_version(self) -> int:
        return self.conn().execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        target = len(MIGRATIONS)
        if self.schema_version() > target:
            raise RuntimeError(f"{self.path} has feedback schema version {self.schema_version()}, newer than this "
                               f"rlft understands ({target}); upgrade rlft")
        if self.schema_version() == target:
            return
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]  # again, now under the write lock
            for v in range(version, target):
                for stmt in MIGRATIONS[v]:
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version = {v + 1}")

    # -- the trainer's side -----------------------------------------------------------------------------

    def add_run(self, run_id: str, meta: dict | None = None) -> None:
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO runs (id, created, meta) VALUES (?, ?, ?)",
                      (run_id, time.time(), json.dumps(meta or {})))

    def add_samples(self, run_id: str, step: int, prompts: list[str], completions: list[str],
                    group_ids: list[int], pairs: Iterable[tuple[int, int]] | None = None) -> list[int]:
        """Store one batch of samples and the items to rate, in one transaction; returns the item ids.

        Without ``pairs`` every sample becomes a ``score`` item; with ``pairs`` (index pairs into this batch,
        A first) each pair becomes a ``pair`` item instead."""
        if not (len(prompts) == len(completions) == len(group_ids)):
            raise ValueError("prompts, completions and group_ids must have the same length")
        now = time.time()
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO runs (id, created) VALUES (?, ?)", (run_id, now))
            batch = c.execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM items").fetchone()[0]
            sample_ids = []
            for i, (p, comp, g) in enumerate(zip(prompts, completions, group_ids)):
                cur = c.execute("INSERT INTO samples (run_id, step, group_id, idx, prompt, completion, created) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", (run_id, int(step), int(g), i, p, comp, now))
                sample_ids.append(cur.lastrowid)
            todo = [(sample_ids[i], None) for i in range(len(sample_ids))] if pairs is None else \
                   [(sample_ids[i], sample_ids[j]) for i, j in pairs]
            item_ids = []
            for a, b in todo:
                cur = c.execute("INSERT INTO items (kind, sample_a, sample_b, batch, created) VALUES (?, ?, ?, ?, ?)",
                                ("score" if b is None else "pair", a, b, batch, now))
                item_ids.append(cur.lastrowid)
        return item_ids

    def results(self, item_ids: list[int]) -> dict[int, dict]:
        """The ratings so far of these items: ``{item_id: {"kind", "score", "choice"}}`` (unrated are absent)."""
        out: dict[int, dict] = {}
        ids = list(item_ids)
        with self._read() as c:
            for k in range(0, len(ids), 500):  # stay under SQLite's limit on bound parameters
                chunk = ids[k:k + 500]
                rows = c.execute(f"SELECT item_id, kind, score, choice FROM ratings WHERE kind != 'skip' AND "
                                 f"item_id IN ({','.join('?' * len(chunk))})", chunk)
                for r in rows:
                    out[r["item_id"]] = {"kind": r["kind"], "score": r["score"], "choice": r["choice"]}
        return out

    # -- the raters' side -------------------------------------------------------------------------------

    def _touch(self, c: sqlite3.Connection, rater: str, now: float) -> None:
        c.execute("INSERT INTO raters (name, created, last_seen) VALUES (?, ?, ?) "
                  "ON CONFLICT(name) DO UPDATE SET last_seen = excluded.last_seen", (rater, now, now))

    def _item(self, c: sqlite3.Connection, item_id: int) -> dict | None:
        r = c.execute("SELECT i.*, a.run_id, a.step, a.group_id, a.prompt, a.completion AS completion_a, "
                      "b.completion AS completion_b FROM items i JOIN samples a ON a.id = i.sample_a "
                      "LEFT JOIN samples b ON b.id = i.sample_b WHERE i.id = ?", (item_id,)).fetchone()
        if r is None:
            return None
        item = {"id": r["id"], "kind": r["kind"], "run_id": r["run_id"], "step": r["step"],
                "group_id": r["group_id"], "prompt": r["prompt"],
                "a": {"sample_id": r["sample_a"], "completion": r["completion_a"]}, "b": None,
                "done": bool(r["done"]), "lease_rater": r["lease_rater"], "lease_until": r["lease_until"]}
        if r["kind"] == "pair":
            item["b"] = {"sample_id": r["sample_b"], "completion": r["completion_b"]}
        return item

    def get_item(self, item_id: int) -> dict:
        with self._read() as c:
            item = self._item(c, item_id)
        if item is None:
            raise NotFound(f"no item {item_id}")
        return item

    def next_item(self, rater: str) -> dict | None:
        """The item this rater should see now, leased to them (and the lease renewed): the one they already
        hold, else the first free one -- newest batch first (that is the step a trainer is waiting for),
        in order within a batch -- that they have not skipped. ``None`` when there is nothing to rate."""
        rater = check_rater(rater)
        now = time.time()
        with self._write() as c:
            self._touch(c, rater, now)
            row = c.execute("SELECT id FROM items WHERE done = 0 AND lease_rater = ? AND lease_until > ? "
                            "ORDER BY batch DESC, id LIMIT 1", (rater, now)).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT id FROM items i WHERE done = 0 AND (lease_until IS NULL OR lease_until <= ?) "
                    "AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = i.id AND r.rater = ? "
                    "AND r.kind = 'skip') ORDER BY batch DESC, id LIMIT 1", (now, rater)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE items SET lease_rater = ?, lease_until = ? WHERE id = ?",
                      (rater, now + self.lease_s, row["id"]))
            return self._item(c, row["id"])

    def _open_item(self, c: sqlite3.Connection, item_id, rater: str, now: float) -> sqlite3.Row:
        """The item, checked to exist, be unrated and not leased to someone else."""
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise Invalid(f"item id must be an integer, got {item_id!r}")
        row = c.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotFound(f"no item {item_id}")
        if row["done"]:
            raise Conflict(f"item {item_id} has already been rated")
        if row["lease_rater"] not in (None, rater) and row["lease_until"] > now:
            raise Conflict(f"item {item_id} is being rated by {row['lease_rater']}")
        return row

    def rate(self, rater: str, item_id: int, *, score: int | None = None, choice: str | None = None,
             comment: str = "") -> dict:
        """Record a rating: ``score`` 1-5 for a ``score`` item, ``choice`` a | b | tie for a ``pair`` item.
        Raises ``Invalid`` (bad value), ``NotFound`` (no such item) or ``Conflict`` (already rated, or leased
        to another rater). Committed to disk when it returns."""
        rater = check_rater(rater)
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5):
            raise Invalid(f"score must be an integer from 1 to 5, got {score!r}")
        if choice is not None and choice not in CHOICES:
            raise Invalid(f"choice must be 'a', 'b' or 'tie', got {choice!r}")
        comment = "" if comment is None else comment
        if not isinstance(comment, str):
            raise Invalid("comment must be text")
        if len(comment) > MAX_COMMENT:
            raise Invalid(f"comment is {len(comment)} characters; the limit is {MAX_COMMENT}")
        now = time.time()
        with self._write() as c:
            self._touch(c, rater, now)
            item = self._open_item(c, item_id, rater, now)
            if item["kind"] == "score" and (score is None or choice is not None):
                raise Invalid(f"item {item_id} asks for a score from 1 to 5 (and no choice)")
            if item["kind"] == "pair" and (choice is None or score is not None):
                raise Invalid(f"item {item_id} compares two completions: send choice 'a', 'b' or 'tie' (and no score)")
            cur = c.execute("INSERT INTO ratings (item_id, rater, kind, score, choice, comment, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (item_id, rater, item["kind"], score, choice, comment, now))
            c.execute("UPDATE items SET done = 1, lease_rater = NULL, lease_until = NULL WHERE id = ?", (item_id,))
        return {"rating_id": cur.lastrowid, "item_id": item_id}

    def skip(self, rater: str, item_id: int) -> dict:
        """Pass on an item: it goes back to the pool for the others and this rater is not shown it again."""
        rater = check_rater(rater)
        now = time.time()
        with self._write() as c:
            self._touch(c, rater, now)
            self._open_item(c, item_id, rater, now)
            cur = c.execute("INSERT INTO ratings (item_id, rater, kind, created) VALUES (?, ?, 'skip', ?)",
                            (item_id, rater, now))
            c.execute("UPDATE items SET lease_rater = NULL, lease_until = NULL WHERE id = ? AND lease_rater = ?",
                      (item_id, rater))
        return {"rating_id": cur.lastrowid, "item_id": item_id}

    def undo(self, rater: str) -> dict | None:
        """Take back this rater's latest rating or skip. The item returns to the pool leased to them (unless
        someone else rated or holds it since a skip), so the page can show it again; any other item they held
        (the one the page fetched after the rating) is released, so a rater never holds two.
        Returns ``{"undone": <the rating>, "item": <the item, or None>}``, or ``None`` if there is nothing
        to undo. A trainer that already read the rating keeps the value it read."""
        rater = check_rater(rater)
        now = time.time()
        with self._write() as c:
            self._touch(c, rater, now)
            r = c.execute("SELECT * FROM ratings WHERE rater = ? ORDER BY id DESC LIMIT 1", (rater,)).fetchone()
            if r is None:
                return None
            c.execute("DELETE FROM ratings WHERE id = ?", (r["id"],))
            if r["kind"] != "skip":
                c.execute("UPDATE items SET done = 0 WHERE id = ?", (r["item_id"],))
            cur = c.execute("UPDATE items SET lease_rater = ?, lease_until = ? WHERE id = ? AND done = 0 AND "
                            "(lease_rater IS NULL OR lease_rater = ? OR lease_until <= ?)",
                            (rater, now + self.lease_s, r["item_id"], rater, now))
            item = None
            if cur.rowcount:
                # The page asked for the next item after the rating/skip; that one goes back to the pool,
                # so a rater holds one open item at a time (undo repeatedly walks back, one lease each time).
                c.execute("UPDATE items SET lease_rater = NULL, lease_until = NULL "
                          "WHERE lease_rater = ? AND done = 0 AND id != ?", (rater, r["item_id"]))
                item = self._item(c, r["item_id"])
        undone = {k: r[k] for k in ("id", "item_id", "kind", "score", "choice", "comment")}
        return {"undone": undone, "item": item}

    def progress(self) -> dict:
        """Counts for the page: items rated / pending / leased now, and per rater rated and skipped."""
        now = time.time()
        with self._read() as c:
            rated, pending, leased = c.execute(
                "SELECT COALESCE(SUM(done = 1), 0), COALESCE(SUM(done = 0), 0), "
                "COALESCE(SUM(done = 0 AND lease_until > ?), 0) FROM items", (now,)).fetchone()
            raters = [dict(r) for r in c.execute(
                "SELECT w.name AS name, COALESCE(SUM(r.kind != 'skip'), 0) AS rated, "
                "COALESCE(SUM(r.kind = 'skip'), 0) AS skipped FROM raters w LEFT JOIN ratings r ON r.rater = w.name "
                "GROUP BY w.name ORDER BY rated DESC, w.name")]
        return {"rated": rated, "pending": pending, "leased": leased, "raters": raters}

    # -- reading ratings back -----------------------------------------------------------------------------

    def ratings(self, *, include_skips: bool = False, run_id: str | None = None) -> list[dict]:
        """Every rating with its item and samples, oldest first (one consistent snapshot)."""
        sql = ("SELECT r.id AS rating_id, r.item_id, r.kind, r.rater, r.score, r.choice, r.comment, r.created, "
               "a.run_id, a.step, a.group_id, a.prompt, i.sample_a, a.completion AS completion_a, i.sample_b, "
               "b.completion AS completion_b FROM ratings r JOIN items i ON i.id = r.item_id "
               "JOIN samples a ON a.id = i.sample_a LEFT JOIN samples b ON b.id = i.sample_b WHERE 1 = 1")
        args: list = []
        if not include_skips:
            sql += " AND r.kind != 'skip'"
        if run_id is not None:
            sql += " AND a.run_id = ?"
            args.append(run_id)
        with self._read() as c:
            rows = c.execute(sql + " ORDER BY r.id", args).fetchall()
        out = []
        for r in rows:
            d = {k: r[k] for k in ("rating_id", "item_id", "kind", "rater", "score", "choice", "comment", "created",
                                   "run_id", "step", "group_id", "prompt")}
            if r["kind"] == "pair" or (r["kind"] == "skip" and r["sample_b"] is not None):
                d.update(sample_a=r["sample_a"], completion_a=r["completion_a"],
                         sample_b=r["sample_b"], completion_b=r["completion_b"])
            else:
                d.update(sample_id=r["sample_a"], completion=r["completion_a"])
            out.append(d)
        return out

    def export(self, fp: IO[str], *, include_skips: bool = False) -> int:
        """Write the ratings as JSONL (one object per rating, fields as in ``ratings``); returns the count."""
        rows = self.ratings(include_skips=include_skips)
        for d in rows:
            fp.write(json.dumps(d, ensure_ascii=False) + "\n")
        return len(rows)
