"""The HTTP judge against a small OpenAI-compatible server started here on 127.0.0.1: scores, template filling,
retries, timeouts, garbage replies, and the API key staying out of logs. Timeouts are short to keep it fast."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlft.rewards import Reward, check_columns, compute
from rlft.rewards.judge import judge, parse_score

KEY = "sk-test-sekrit-123"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
            hits = srv.hits[self.path]
        mode = self.path.split("/")[1]
        user = body["messages"][-1]["content"]
        if mode == "slow":
            time.sleep(0.6)
        if mode == "flaky" and hits == 1:
            return self.reply(503, b"busy")
        if mode == "auth" and self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.reply(401, b"no")
        if mode == "garbage":
            return self.reply(200, b"<html>not json</html>")
        if mode == "nonumber":
            content = "I would rather not say."
        else:  # the grade follows the completion: "good" -> 9/10, else 2/10
            content = "Reasoning...\nScore: 9/10" if "ANSWER: good" in user else "Looks weak.\nScore: 2/10"
        self.reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

    def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.lock, srv.seen, srv.hits = threading.Lock(), [], {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


TEMPLATE = "Q: {prompt}\nANSWER: {completion}\nREF: {reference}"
FAST = dict(model="judge-1", template=TEMPLATE, timeout=0.2, backoff=0.01, retries=1, api_key_env=None)


def test_parse_score():
    assert parse_score("Score: 7/10") == pytest.approx(0.7)
    assert parse_score("I think... **Score:** 8") == pytest.approx(0.8)
    assert parse_score("Score: 3 at first. On reflection, Score: 6/10.") == pytest.approx(0.6)  # the last one
    assert parse_score("4/5", 1, 5) == pytest.approx(0.75)          # (4 - 1) / (5 - 1)
    assert parse_score("Rating: 3", 1, 5) == pytest.approx(0.5)
    assert parse_score("8 out of 10", 1, 5) == pytest.approx(0.8)   # another scale: read as 8 on [0, 10]
    assert parse_score(" 9. ") == pytest.approx(0.9)
    assert parse_score("Score: 11/10") is None                      # out of range
    assert parse_score("Rating: 0", 1, 5) is None
    assert parse_score("no idea") is None
    assert parse_score("[[5]]", score_regex=r"\[\[(\d+)\]\]") == pytest.approx(0.5)


def test_scores_and_template(server):
    srv, url = server
    got = judge(["q1", "q2"], ["good", "bad"], base_url=url + "/ok/v1", reference=["r1", ["r2a", "r2b"]], **FAST,
                system="You are strict.")
    assert got == [pytest.approx(0.9), pytest.approx(0.2)]
    sent = [s for s in srv.seen if s["path"] == "/ok/v1/chat/completions"]
    bodies = sorted((s["body"] for s in sent), key=lambda b: b["messages"][1]["content"])
    assert bodies[0]["model"] == "judge-1" and bodies[0]["temperature"] == 0.0
    assert bodies[0]["messages"] == [{"role": "system", "content": "You are strict."},
                                     {"role": "user", "content": "Q: q1\nANSWER: good\nREF: r1"}]
    assert bodies[1]["messages"][1]["content"] == "Q: q2\nANSWER: bad\nREF: r2a\nr2b"
    assert judge.last_stats["requests"] == 2 and judge.last_stats["failures"] == 0


def test_retry_after_a_server_error(server):
    _, url = server
    got = judge(["q"], ["good"], base_url=url + "/flaky/v1", reference=["r"], **FAST)
    assert got == [pytest.approx(0.9)]
    s = judge.last_stats
    assert s["requests"] == 2 and s["retries"] == 1 and s["http_errors"] == 1 and s["failures"] == 0


def test_timeouts_become_none_and_are_counted(server):
    _, url = server
    t = time.perf_counter()
    got = judge(["q"] * 4, ["good"] * 4, base_url=url + "/slow/v1", reference=["r"] * 4, **FAST)
    # 4 rows at once, each: 0.2 s timeout, ~0.01 s backoff, 0.2 s timeout
    assert time.perf_counter() - t < 1.5
    assert got == [None] * 4
    s = judge.last_stats
    assert s["timeouts"] == 8 and s["retries"] == 4 and s["failures"] == 4


def test_garbage_and_scoreless_replies(server):
    _, url = server
    assert judge(["q"], ["good"], base_url=url + "/garbage/v1", reference=["r"], **FAST) == [None]
    assert judge.last_stats["bad_responses"] == 2 and judge.last_stats["failures"] == 1  # retried once
    assert judge(["q"], ["good"], base_url=url + "/nonumber/v1", reference=["r"], **FAST) == [None]
    assert judge.last_stats["parse_failures"] == 1 and judge.last_stats["requests"] == 1  # not retried


def test_connection_refused_is_counted():
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = judge(["q"], ["good"], base_url=f"http://127.0.0.1:{port}/v1", reference=["r"], **FAST)
    assert got == [None] and judge.last_stats["connection_errors"] == 2


def test_api_key_is_sent_and_never_logged(server, monkeypatch, caplog):
    srv, url = server
    monkeypatch.setenv("JUDGE_KEY", KEY)
    opts = {**FAST, "api_key_env": "JUDGE_KEY"}
    assert judge(["q"], ["good"], base_url=url + "/auth/v1", reference=["r"], **opts) == [pytest.approx(0.9)]
    assert srv.seen[-1]["auth"] == f"Bearer {KEY}"
    monkeypatch.setenv("JUDGE_KEY", "wrong-key-456")
    with caplog.at_level(logging.DEBUG):
        assert judge(["q"], ["good"], base_url=url + "/auth/v1", reference=["r"], **opts) == [None]
    assert judge.last_stats["http_errors"] == 1 and judge.last_stats["retries"] == 0  # 401 is not retried
    assert "HTTP 401" in caplog.text and "wrong-key-456" not in caplog.text and KEY not in caplog.text
    assert "wrong-key-456" not in repr(judge.last_stats)


def test_inside_compute_the_counts_are_logged(server):
    _, url = server
    args = {**FAST, "base_url": url + "/nonumber/v1"}
    res = compute([Reward("judge", judge, args=args)], ["q", "q"], ["a", "b"], [1, 1], {"reference": ["r", "r"]})
    m = res.metrics()
    assert m["reward/judge/failures"] == 2 and m["reward/judge/parse_failures"] == 2
    assert m["reward/judge_none_frac"] == 1.0 and res.invalid == [False, False]


def test_template_columns_are_checked_at_start_up():
    r = Reward("j", judge, args={"base_url": "http://x", "model": "m", "template": "{prompt} {completion} {gold}"})
    with pytest.raises(ValueError, match="'j' .*needs 'gold'"):
        check_columns([r], ["prompt", "reference"])
    check_columns([r], ["prompt", "gold"])
    with pytest.raises(ValueError, match="needs 'base_url'.*needs 'model'"):
        check_columns([Reward("j", judge)], ["prompt", "reference"])
    with pytest.raises(ValueError, match=r"names \{gold\}"):
        judge(["p"], ["c"], base_url="http://x", model="m", template="{gold}")
