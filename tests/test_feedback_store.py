"""The feedback store: schema and migrations, the lease rule, validation, undo/skip, export, and that a writer
killed mid-way leaves every committed row intact."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rlft
from rlft.feedback import store as store_mod
from rlft.feedback.store import Conflict, Invalid, NotFound, Store

ROOT = str(Path(rlft.__file__).resolve().parent.parent)


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _fill(store, n=3, pairs=None, run="r1", step=0):
    prompts = [f"prompt {i // 2}" for i in range(n)]
    completions = [f"completion {i}" for i in range(n)]
    return store.add_samples(run, step, prompts, completions, [i // 2 for i in range(n)], pairs=pairs)


def test_schema_wal_and_version(tmp_path):
    db = tmp_path / "f.sqlite"
    with Store(db) as s:
        assert s.schema_version() == len(store_mod.MIGRATIONS) == 1
        assert s.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in s.conn().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "samples", "items", "ratings", "raters"} <= tables
        _fill(s)
    with Store(db) as s:  # reopening is a no-op and keeps the data
        assert s.progress()["pending"] == 3


def test_migration_steps_run_in_order_and_keep_data(tmp_path, monkeypatch):
    db = tmp_path / "f.sqlite"
    with Store(db) as s:
        _fill(s)
    extra = ["ALTER TABLE samples ADD COLUMN source TEXT NOT NULL DEFAULT 'policy'"]
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [extra])
    with Store(db) as s:
        assert s.schema_version() == 2
        assert [r[0] for r in s.conn().execute("SELECT source FROM samples")] == ["policy"] * 3
        assert s.progress()["pending"] == 3


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "f.sqlite"
    Store(db).close()
    c = sqlite3.connect(db)
    c.execute("PRAGMA user_version = 99")
    c.close()
    with pytest.raises(RuntimeError, match="schema version 99, newer"):
        Store(db)


def test_lease_hands_each_item_to_one_rater(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        ids = _fill(s, 2)
        a = s.next_item("ann")
        assert s.next_item("ann")["id"] == a["id"]  # asking again gives the same item (lease renewed)
        b = s.next_item("bob")
        assert {a["id"], b["id"]} == set(ids)
        assert s.next_item("cy") is None  # both are leased
        with pytest.raises(Conflict, match="being rated by ann"):
            s.rate("bob", a["id"], score=3)
        s.rate("ann", a["id"], score=4, comment="fine")
        with pytest.raises(Conflict, match="already been rated"):
            s.rate("ann", a["id"], score=5)
        assert s.next_item("ann") is None  # a rated item is never handed out again
        p = s.progress()
        assert (p["rated"], p["pending"], p["leased"]) == (1, 1, 1)


def test_expired_lease_returns_item_to_pool(tmp_path):
    with Store(tmp_path / "f.sqlite", lease_s=0.3) as s:
        (item,) = _fill(s, 1)
        got = s.next_item("ann")
        assert s.next_item("bob") is None
        deadline = time.time() + 30
        while time.time() <= got["lease_until"] and time.time() < deadline:
            time.sleep(0.05)
        assert s.next_item("bob")["id"] == item  # ann's lease ran out
        with pytest.raises(Conflict, match="being rated by bob"):
            s.rate("ann", item, score=2)


def test_validation_messages(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        (score_item,) = _fill(s, 1)
        (pair_item,) = _fill(s, 2, pairs=[(0, 1)], step=1)
        with pytest.raises(Invalid, match="score must be an integer from 1 to 5, got 7"):
            s.rate("ann", score_item, score=7)
        with pytest.raises(Invalid, match="score must be an integer"):
            s.rate("ann", score_item, score=True)
        with pytest.raises(Invalid, match="choice must be 'a', 'b' or 'tie'"):
            s.rate("ann", pair_item, choice="c")
        with pytest.raises(Invalid, match="compares two completions"):
            s.rate("ann", pair_item, score=3)
        with pytest.raises(Invalid, match="asks for a score"):
            s.rate("ann", score_item, choice="a")
        with pytest.raises(Invalid, match="limit is 2000"):
            s.rate("ann", score_item, score=3, comment="x" * 2001)
        with pytest.raises(Invalid, match="rater name is required"):
            s.rate("  ", score_item, score=3)
        with pytest.raises(NotFound):
            s.rate("ann", 12345, score=3)
        assert s.progress()["rated"] == 0


def test_skip_and_undo(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        i1, i2 = _fill(s, 2)
        assert s.next_item("ann")["id"] == i1
        s.skip("ann", i1)
        assert s.next_item("ann")["id"] == i2  # not shown the skipped one again
        assert s.next_item("bob")["id"] == i1  # but someone else is
        s.rate("ann", i2, score=5, comment="great")
        undone = s.undo("ann")
        assert undone["undone"]["kind"] == "score" and undone["undone"]["score"] == 5
        assert undone["undone"]["comment"] == "great"
        assert undone["item"]["id"] == i2 and undone["item"]["lease_rater"] == "ann"
        assert s.results([i2]) == {}
        s.rate("ann", i2, score=4)
        assert s.results([i2])[i2]["score"] == 4
        s.undo("ann")  # the rating again
        undone = s.undo("ann")  # then the skip of i1, which bob holds now: ann does not get it back
        assert undone["undone"]["kind"] == "skip" and undone["item"] is None
        assert s.undo("zed") is None
        p = s.progress()
        counts = {r["name"]: (r["rated"], r["skipped"]) for r in p["raters"]}
        assert counts == {"ann": (0, 0), "bob": (0, 0), "zed": (0, 0)}


def _held(store, rater):
    """The items this rater holds an open lease on now."""
    rows = store.conn().execute("SELECT id FROM items WHERE done = 0 AND lease_rater = ? AND lease_until > ?",
                                (rater, time.time())).fetchall()
    return sorted(r["id"] for r in rows)


@pytest.mark.parametrize("action", ["skip", "rate"])
def test_undo_leaves_the_rater_one_lease(tmp_path, action):
    """The page asks for the next item after a skip or a rating; undo then brings the first item back. The
    rater must not hold both (the page showed "2 open now" and the next item was locked away from others)."""
    with Store(tmp_path / "f.sqlite") as s:
        i1, i2, i3 = _fill(s, 3)
        assert s.next_item("ann")["id"] == i1
        s.skip("ann", i1) if action == "skip" else s.rate("ann", i1, score=2)
        assert s.next_item("ann")["id"] == i2
        assert s.undo("ann")["item"]["id"] == i1
        assert _held(s, "ann") == [i1]
        assert s.progress()["leased"] == 1
        assert s.next_item("bob")["id"] == i2  # the item ann was shown before undo is free again
        assert s.next_item("ann")["id"] == i1  # and ann's open item is the one undo gave back


def test_undo_that_cannot_give_the_item_back_keeps_the_current_lease(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        i1, i2 = _fill(s, 2)
        s.next_item("ann")
        s.skip("ann", i1)
        assert s.next_item("ann")["id"] == i2
        assert s.next_item("bob")["id"] == i1  # bob holds the skipped item
        assert s.undo("ann")["item"] is None
        assert _held(s, "ann") == [i2]  # ann keeps what she was looking at


def test_newest_batch_first(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        old = _fill(s, 2, step=0)
        new = _fill(s, 2, step=1)
        assert s.next_item("ann")["id"] == new[0]
        assert s.next_item("bob")["id"] == new[1]
        assert s.next_item("cy")["id"] == old[0]


def test_export_jsonl(tmp_path):
    with Store(tmp_path / "f.sqlite") as s:
        (si,) = _fill(s, 1)
        (pi,) = _fill(s, 2, pairs=[(1, 0)], step=3)
        s.rate("ann", si, score=2, comment="meh <b>")
        s.rate("bob", pi, choice="a")
        buf = io.StringIO()
        assert s.export(buf) == 2
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert rows[0]["kind"] == "score" and rows[0]["score"] == 2 and rows[0]["completion"] == "completion 0"
    assert rows[0]["comment"] == "meh <b>" and rows[0]["rater"] == "ann"
    assert rows[1]["kind"] == "pair" and rows[1]["choice"] == "a" and rows[1]["step"] == 3
    assert (rows[1]["completion_a"], rows[1]["completion_b"]) == ("completion 1", "completion 0")


WRITER = r"""
import sys
from rlft.feedback.store import Store
s = Store(sys.argv[1])
n = 0
for step in range(100000):
    ids = s.add_samples("run", step, ["p"] * 4, [f"c{step}-{k}" for k in range(4)], [0, 0, 1, 1])
    for i in ids:
        s.next_item("writer")
        s.rate("writer", i, score=1 + i % 5, comment="x" * 200)
        n += 1
        print(n, flush=True)
"""


def test_killed_writer_loses_nothing_committed(tmp_path):
    db = str(tmp_path / "f.sqlite")
    Store(db).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db], stdout=subprocess.PIPE, text=True, env=_env())
    last = 0
    try:
        for line in proc.stdout:
            last = int(line)
            if last >= 40:
                break
        assert last >= 40, "the writer died early"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    with Store(db) as s:
        c = s.conn()
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ratings = c.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
        assert ratings >= last  # everything it reported as committed is there
        # batches are all-or-nothing, and every rating matches a done item and vice versa
        assert c.execute("SELECT COUNT(*) FROM samples").fetchone()[0] % 4 == 0
        count = lambda table: c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: E731
        assert count("items") == count("samples")
        assert c.execute("SELECT COUNT(*) FROM items WHERE done = 1").fetchone()[0] == ratings
        bad = c.execute("SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id "
                        "WHERE i.done = 0 OR r.score != 1 + i.id % 5 OR length(r.comment) != 200").fetchone()[0]
        assert bad == 0
        # and the file still works for the next writer
        (i,) = s.add_samples("run", 10**6, ["p"], ["c"], [0])
        s.rate("after", i, score=3)


def test_many_connections_opening_a_new_database_at_once(tmp_path):
    """The first opens of a new file race to switch it to WAL; SQLite answers 'database is locked' at once for
    that (no busy wait): before the retry, about one trial in ten (six threads opening at once) failed."""
    errors = []
    for trial in range(20):
        db = tmp_path / f"f{trial}.sqlite"

        def open_and_ask(db=db):  # bound now: the loop moves on
            try:
                with Store(db) as s:
                    s.next_item("ann")
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

        threads = [threading.Thread(target=open_and_ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
