"""The rating server's API: the rating flow, validation, the security checks (token, Host, CSRF), several
raters at once with a trainer writing from another process, and the ``rlft rate`` command."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import rlft  # noqa: E402
from rlft.feedback.cli import rate_main  # noqa: E402
from rlft.feedback.server import LOOPBACK, create_app, start  # noqa: E402
from rlft.feedback.store import Store  # noqa: E402

ROOT = str(Path(rlft.__file__).resolve().parent.parent)
BASE = "http://127.0.0.1:8000"


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "feedback.sqlite"
    with Store(path) as s:
        s.add_samples("run1", 7, ["Say hi", "Say hi"], ["hi!", "hello <b>there</b>"], [0, 0])
        s.add_samples("run1", 8, ["Pick", "Pick"], ["left", "right"], [0, 0], pairs=[(0, 1)])
    return path


@pytest.fixture
def client(db):
    with TestClient(create_app(db, allowed_hosts=LOOPBACK), base_url=BASE) as c:
        c.headers["X-Rlft-Csrf"] = c.get("/api/session").json()["csrf"]
        yield c


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "rlft rate" in r.text and "/static/app.js" in r.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../store.py").status_code == 404
    assert client.get("/static/store.py").status_code == 404
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


def test_rate_flow(client, db):
    item = client.post("/api/next", json={"rater": "ann"}).json()["item"]
    assert item["kind"] == "pair" and item["step"] == 8  # the newest batch first
    assert (item["a"]["completion"], item["b"]["completion"]) == ("left", "right")
    r = client.post("/api/rate", json={"rater": "ann", "item_id": item["id"], "choice": "tie", "comment": "same"})
    assert r.status_code == 200, r.text
    item = client.post("/api/next", json={"rater": "ann"}).json()["item"]
    assert item["kind"] == "score" and item["a"]["completion"] == "hi!"
    r = client.post("/api/rate", json={"rater": "ann", "item_id": item["id"], "score": 5})
    assert r.json()["progress"]["rated"] == 2
    other = client.post("/api/next", json={"rater": "bob"}).json()["item"]
    assert client.post("/api/skip", json={"rater": "bob", "item_id": other["id"]}).status_code == 200
    undo = client.post("/api/undo", json={"rater": "ann"}).json()
    assert undo["undone"]["score"] == 5 and undo["item"]["id"] == item["id"]
    p = client.get("/api/progress").json()
    assert (p["rated"], p["pending"]) == (1, 2)
    assert {r["name"]: (r["rated"], r["skipped"]) for r in p["raters"]} == {"ann": (1, 0), "bob": (0, 1)}
    assert client.get(f"/api/item/{other['id']}").json()["a"]["completion"] == other["a"]["completion"]
    with Store(db) as s:
        rows = s.ratings(include_skips=True)
    assert [(r["rater"], r["kind"], r["choice"], r["comment"]) for r in rows] == [
        ("ann", "pair", "tie", "same"), ("bob", "skip", None, "")]


def test_validation_messages(client):
    item = client.post("/api/next", json={"rater": "ann"}).json()["item"]  # a pair item
    score_item = client.post("/api/next", json={"rater": "bob"}).json()["item"]
    r = client.post("/api/rate", json={"rater": "bob", "item_id": score_item["id"], "score": 7})
    assert r.status_code == 422 and r.json()["error"] == "score must be an integer from 1 to 5, got 7"
    r = client.post("/api/rate", json={"rater": "ann", "item_id": item["id"], "score": 3})
    assert r.status_code == 422 and "send choice 'a', 'b' or 'tie'" in r.json()["error"]
    r = client.post("/api/rate", json={"rater": "bob", "item_id": 999, "score": 3})
    assert r.status_code == 404 and r.json()["error"] == "no item 999"
    assert client.get("/api/item/999").status_code == 404
    r = client.post("/api/rate", json={"rater": "bob", "item_id": score_item["id"], "score": 3, "comment": "x" * 2001})
    assert r.status_code == 422 and "limit is 2000" in r.json()["error"]
    r = client.post("/api/rate", json={"rater": "bob", "item_id": score_item["id"], "score": "high"})
    assert r.status_code == 422 and r.json()["error"].startswith("score:")
    r = client.post("/api/rate", json={"rater": "bob", "item_id": score_item["id"], "score": 3, "extra": 1})
    assert r.status_code == 422 and "extra" in r.json()["error"]
    r = client.post("/api/next", json={"rater": ""})
    assert r.status_code == 422 and "rater name is required" in r.json()["error"]
    r = client.post("/api/rate", json={"rater": "ann", "item_id": score_item["id"], "score": 3})
    assert r.status_code == 409 and "being rated by bob" in r.json()["error"]
    assert client.get("/api/progress").json()["rated"] == 0


def test_cross_site_requests_are_refused(client):
    item = client.post("/api/next", json={"rater": "ann"}).json()["item"]
    good = {"rater": "ann", "item_id": item["id"], "choice": "a"}
    # what a form on another site can send: form-encoded, no custom header, a foreign Origin
    r = client.post("/api/rate", data={k: str(v) for k, v in good.items()},
                    headers={"Origin": "http://evil.example", "X-Rlft-Csrf": ""})
    assert r.status_code in (403, 415)
    r = client.post("/api/rate", content=json.dumps(good), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/rate", json=good, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = client.post("/api/rate", json=good, headers={"X-Rlft-Csrf": "guess"})
    assert r.status_code == 403 and "X-Rlft-Csrf" in r.json()["error"]
    r = client.post("/api/rate", content=b"{" + b" " * 70000 + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/progress").json()["rated"] == 0
    r = client.post("/api/rate", json=good, headers={"Origin": BASE})  # the page's own origin is fine
    assert r.status_code == 200


def test_host_header_must_be_loopback(client):
    # DNS rebinding: a foreign name resolving to 127.0.0.1 arrives with that name in Host
    r = client.get("/api/progress", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 400
    assert client.get("/api/progress", headers={"Host": "localhost:8000"}).status_code == 200


def test_token_required(db):
    app = create_app(db, token="s3cret-token", allowed_hosts=None)
    with TestClient(app, base_url="http://10.1.2.3:8000") as c:
        for path in ("/", "/static/app.js", "/api/session", "/api/progress"):
            r = c.get(path)
            assert r.status_code == 401 and "access token" in r.json()["error"], path
        assert c.post("/api/next", json={"rater": "x"}).status_code == 401
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/api/progress", headers={"X-Rlft-Token": "s3cret-token"}).status_code == 200
        r = c.get("/?token=s3cret-token", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/").status_code == 200  # the cookie now carries the token
        csrf = c.get("/api/session").json()["csrf"]
        r = c.post("/api/next", json={"rater": "x"}, headers={"X-Rlft-Csrf": csrf})
        assert r.status_code == 200 and r.json()["item"] is not None


WRITER = r"""
import sys, time
from rlft.feedback.store import Store
s = Store(sys.argv[1])
for step in range(12):
    s.add_samples("run", step, [f"p{step}"] * 5, [f"c{step}-{k}" for k in range(5)], [0] * 5)
    time.sleep(0.02)
"""


def test_two_raters_and_a_writer_process(tmp_path):
    db = tmp_path / "f.sqlite"
    Store(db).close()
    got: dict[str, list[int]] = {"ann": [], "bob": []}
    errors: list[str] = []
    with start(db) as server:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], env=_env())

        def rate(name):
            with httpx.Client(base_url=server.base, timeout=60) as c:
                c.headers["X-Rlft-Csrf"] = c.get("/api/session").json()["csrf"]
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    writing = writer.poll() is None
                    item = c.post("/api/next", json={"rater": name}).json()["item"]
                    if item is None:
                        if not writing:
                            return
                        time.sleep(0.01)
                        continue
                    body = {"rater": name, "item_id": item["id"], "score": 1 + len(got[name]) % 5}
                    r = c.post("/api/rate", json=body)
                    if r.status_code != 200:
                        errors.append(r.text)
                    got[name].append(item["id"])
                errors.append(f"{name} ran out of time")

        threads = [threading.Thread(target=rate, args=(n,)) for n in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert writer.wait(60) == 0
    assert not errors
    with Store(db) as s:
        c = s.conn()
        assert c.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 60
        assert c.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 60
        per_rater = dict(c.execute("SELECT rater, COUNT(*) FROM ratings GROUP BY rater").fetchall())
        p = s.progress()
    assert len(got["ann"]) + len(got["bob"]) == 60
    assert not set(got["ann"]) & set(got["bob"])  # no item was given to both
    assert per_rater == {n: len(v) for n, v in got.items() if v}
    assert (p["rated"], p["pending"]) == (60, 0)


def _serve(args):
    """Start ``python -m rlft.feedback.cli rate ...``; return the process and the URL it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "rlft.feedback.cli", "rate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    for line in proc.stdout:
        m = re.search(r"open (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"rlft rate printed no address (exit {proc.wait()})")


def test_cli_serves_on_loopback_without_token(db):
    proc, url = _serve(["--db", str(db), "--port", "0"])
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert httpx.get(url + "api/progress", timeout=60).json()["pending"] == 3
    finally:
        proc.terminate()
        proc.wait(60)


def test_cli_public_bind_generates_token(db):
    proc, url = _serve(["--db", str(db), "--port", "0", "--host", "0.0.0.0"])
    try:
        m = re.fullmatch(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", url)
        assert m, url
        assert httpx.get(m.group(1) + "api/progress", timeout=60).status_code == 401
        r = httpx.get(m.group(1) + "api/progress", headers={"X-Rlft-Token": m.group(2)}, timeout=60)
        assert r.json()["pending"] == 3
    finally:
        proc.terminate()
        proc.wait(60)


def test_cli_export(db, tmp_path):
    with Store(db) as s:
        item = s.next_item("ann")
        s.rate("ann", item["id"], choice="b", comment="B <i>wins</i>")
    out = tmp_path / "ratings.jsonl"
    assert rate_main(["export", "--db", str(db), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["choice"] == "b" and row["comment"] == "B <i>wins</i>" and row["completion_b"] == "right"
    r = subprocess.run([sys.executable, "-m", "rlft.feedback.cli", "rate", "export", "--db", str(db), "--out", "-"],
                       capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["rating_id"] == row["rating_id"]
    with pytest.raises(SystemExit):
        rate_main(["export", "--db", str(db)])  # --out is required


def test_cli_reports_a_busy_port(db, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert rate_main(["--db", str(db), "--port", str(port)]) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
