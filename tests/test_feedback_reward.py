"""Ratings as rewards: the Bradley-Terry fit (values worked out by hand), the ``human`` reward waiting for
ratings that another thread writes, its timeout path in each ``missing`` mode, and ``rlft reward-model train``."""

import json
import math
import random
import subprocess
import sys
import threading
import time

import pytest

from rlft.feedback.cli import reward_model_main
from rlft.feedback.store import Store
from rlft.rewards import REGISTRY, Reward, check_columns, compute
from rlft.rewards.human import bradley_terry, human, score_to_reward


def test_score_scale():
    assert [score_to_reward(s) for s in range(1, 6)] == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_bradley_terry_two_samples_by_hand():
    # One comparison, 0 beat 1. theta = (t, -t); d/dt: 1 - sigmoid(2t) - prior * t = 0.
    # prior = 1 / (2 ln 3), t = ln(3)/2: sigmoid(ln 3) = 3/4, so 1 - 3/4 = 1/4 = ln(3)/2 / (2 ln 3).
    theta = bradley_terry(2, [(0, 1, 1.0)], prior=1 / (2 * math.log(3)))
    assert theta == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-9)
    # the other way round, from the other side
    assert bradley_terry(2, [(1, 0, 0.0)], prior=1 / (2 * math.log(3))) == pytest.approx(theta, abs=1e-9)
    # a tie, or one win each: no preference
    assert bradley_terry(2, [(0, 1, 0.5)]) == pytest.approx([0, 0], abs=1e-12)
    assert bradley_terry(2, [(0, 1, 1.0), (1, 0, 1.0)]) == pytest.approx([0, 0], abs=1e-12)
    # 3 wins to 1 with prior 1: 3 - 4 sigmoid(2t) - t = 0; check the stationarity condition
    (t, u) = bradley_terry(2, [(0, 1, 1.0)] * 3 + [(1, 0, 1.0)])
    assert t == pytest.approx(-u) and 3 - 4 / (1 + math.exp(-2 * t)) - t == pytest.approx(0, abs=1e-9)


def test_bradley_terry_orders_a_chain_and_is_stationary():
    comps = [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 0, 0.5)]
    theta = bradley_terry(4, comps, prior=0.5)
    assert theta[0] > theta[1] > theta[2] > theta[3]
    grad = [-0.5 * x for x in theta]
    for i, j, y in comps:
        p = 1 / (1 + math.exp(-(theta[i] - theta[j])))
        grad[i] += y - p
        grad[j] -= y - p
    assert max(map(abs, grad)) < 1e-9
    assert sum(theta) == pytest.approx(0, abs=1e-9)  # the prior centres it
    with pytest.raises(ValueError, match="prior > 0"):
        bradley_terry(2, [(0, 1, 1.0)], prior=0)


class Rater(threading.Thread):
    """Rates whatever appears in the store, as a person at the page would: ``decide(item) -> dict``."""

    def __init__(self, db, decide, stop_after):
        super().__init__(daemon=True)
        self.store, self.decide, self.stop_after = Store(db), decide, stop_after
        self.done, self.last_rating_at = 0, None

    def run(self):
        deadline = time.monotonic() + 120
        while self.done < self.stop_after and time.monotonic() < deadline:
            item = self.store.next_item("tester")
            if item is None:
                time.sleep(0.02)
                continue
            time.sleep(0.05)  # a person takes a moment: the reward must wait for this
            self.store.rate("tester", item["id"], **self.decide(item))
            self.last_rating_at = time.monotonic()
            self.done += 1


def test_human_reward_waits_for_scores(tmp_path):
    db = str(tmp_path / "f.sqlite")
    prompts = ["p0", "p0", "p1", "p1"]
    completions = ["s1", "s2", "s4", "s5"]  # the rater gives the digit as the score
    rater = Rater(db, lambda item: {"score": int(item["a"]["completion"][1])}, stop_after=4)
    rater.start()
    out = human(prompts, completions, db=db, step=3, group_size=2, timeout_s=120, poll_s=0.02, run_id="t1")
    returned_at = time.monotonic()
    rater.join(60)
    assert out == [-1.0, -0.5, 0.5, 1.0]
    assert returned_at >= rater.last_rating_at  # it returned only once the last rating was in
    with Store(db) as s:
        rows = s.ratings()
    assert {(r["run_id"], r["step"]) for r in rows} == {("t1", 3)}
    assert sorted((r["group_id"], r["completion"]) for r in rows) == [(0, "s1"), (0, "s2"), (1, "s4"), (1, "s5")]


def test_human_reward_pairs_become_bradley_terry(tmp_path):
    db = str(tmp_path / "f.sqlite")
    prompts = ["p0", "p0", "p1", "p1"]
    completions = ["short", "much longer", "a tie", "a tie!"]

    def decide(item):  # longer wins; the second group is a tie
        a, b = item["a"]["completion"], item["b"]["completion"]
        return {"choice": "tie" if "tie" in a else ("a" if len(a) > len(b) else "b")}

    rater = Rater(db, decide, stop_after=2)
    rater.start()
    prior = 1 / (2 * math.log(3))
    out = human(prompts, completions, db=db, mode="pair", group_size=2, prior=prior, timeout_s=120, poll_s=0.02)
    rater.join(60)
    t = math.log(3) / 2  # worked out in test_bradley_terry_two_samples_by_hand
    assert out == pytest.approx([-t, t, 0.0, 0.0], abs=1e-9)


def test_pair_mode_cycle_and_all(tmp_path):
    db = str(tmp_path / "f.sqlite")
    human(["p"] * 4, ["a", "b", "c", "d"], db=db, mode="pair", group_size=4, timeout_s=0)
    human(["p"] * 4, ["a", "b", "c", "d"], db=db, mode="pair", group_size=4, pairs="all", timeout_s=0)
    with Store(db) as s:
        counts = s.conn().execute("SELECT batch, COUNT(*) FROM items GROUP BY batch ORDER BY batch").fetchall()
        pairs = s.conn().execute("SELECT sample_a, sample_b FROM items WHERE batch = 1").fetchall()
    assert [c[1] for c in counts] == [4, 6]  # a ring of 4 comparisons, then all 6
    seen = [x for p in pairs for x in p]
    assert all(seen.count(x) == 2 for x in set(seen)) and len(set(seen)) == 4  # each sample compared twice


@pytest.mark.parametrize("missing", ["drop", "default", "reward_model"])
def test_human_reward_timeout(tmp_path, missing):
    db = str(tmp_path / "f.sqlite")
    prompts, completions = ["p0", "p0", "p1", "p1"], ["a", "bb", "ccc", "dddd"]
    args = {"db": db, "group_size": 2, "timeout_s": 1.0, "poll_s": 0.05, "missing": missing, "default": 0.25}
    expected = {"drop": [None, 0.5, None, None], "default": [0.25, 0.5, 0.25, 0.25]}
    if missing == "reward_model":
        from rlft.feedback.reward_model import load, score
        from rlft.tiny import byte_tokenizer, save_tiny, tiny_classifier

        tok = byte_tokenizer()
        args["reward_model_path"] = save_tiny(tmp_path / "rm", tiny_classifier(tok), tok)
        rm = score(*load(args["reward_model_path"], "cpu"), prompts, completions)
        expected["reward_model"] = [rm[0], 0.5, rm[2], rm[3]]

    # one rating arrives in time (the second sample scores 4); the others never come
    stop = threading.Event()

    def rate_bb():
        with Store(db) as s:
            while not stop.is_set():
                item = s.next_item("ann")
                if item is not None:
                    if item["a"]["completion"] == "bb":
                        s.rate("ann", item["id"], score=4)
                    else:
                        s.skip("ann", item["id"])
                else:
                    stop.wait(0.01)

    t = threading.Thread(target=rate_bb)
    t.start()
    # through the trainer's path: compute() with the config's args and the step
    r = Reward("human", REGISTRY["human"], args=args)
    check_columns([r], ["prompt"])
    try:
        for attempt in range(20):  # on a loaded machine the rater thread may miss a short timeout
            args["run_id"] = f"try{attempt}"
            res = compute([r], prompts, completions, [1] * 4, {}, step=5)
            if res.components["human"][1] is not None:
                break
    finally:
        stop.set()
        t.join(60)
    assert res.components["human"] == pytest.approx(expected[missing])
    assert res.metrics()["reward/human/asked"] == 4


def test_fraction_and_bad_args(tmp_path):
    db = str(tmp_path / "f.sqlite")
    out = human(["p"] * 8, list("abcdefgh"), db=db, group_size=2, fraction=0.5, timeout_s=0, missing="default",
                default=-0.1, step=0)
    assert out == [-0.1] * 8
    with Store(db) as s:
        groups = s.conn().execute("SELECT DISTINCT group_id FROM samples").fetchall()
    assert len(groups) == 2  # half of the 4 groups were sent for rating
    with pytest.raises(ValueError, match="needs args.db"):
        human(["p"], ["a"])
    with pytest.raises(ValueError, match="group_size >= 2"):
        human(["p"], ["a"], db=db, mode="pair")
    with pytest.raises(ValueError, match="reward_model_path"):
        human(["p"], ["a"], db=db, missing="reward_model")
    with pytest.raises(ValueError, match="do not split into groups"):
        human(["p"] * 3, ["a"] * 3, db=db, group_size=2)
    with pytest.raises(ValueError, match="has no arg 'timout_s'"):
        check_columns([Reward("human", REGISTRY["human"], args={"db": db, "timout_s": 5})], ["prompt"])


def test_import_does_not_pull_the_web_server():
    code = ("import sys, rlft.rewards.human, rlft.feedback; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_reward_model_train_learns_preferences(tmp_path):
    """A tiny model learns that longer answers are preferred (and a few 1-5 scores), through the CLI."""
    from transformers import AutoModelForSequenceClassification

    from rlft.feedback.reward_model import evaluate, examples, load
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_classifier

    tok = byte_tokenizer()
    base = save_tiny(tmp_path / "base", tiny_classifier(tok), tok)
    db = str(tmp_path / "f.sqlite")
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away".split()
    with Store(db) as s:
        prompts, completions = [], []
        for g in range(24):
            short = " ".join(rng.choices(words, k=rng.randint(1, 3)))
            long = " ".join(rng.choices(words, k=rng.randint(6, 10)))
            prompts += [f"Q{g}: "] * 2
            completions += [short, long] if g % 2 else [long, short]
        s.add_samples("r", 0, prompts, completions, [i // 2 for i in range(48)],
                      pairs=[(2 * g, 2 * g + 1) for g in range(24)])
        s.add_samples("r", 1, ["Q: "] * 4, ["no", "yes it is", "ok", "a b c d e f"], [0, 0, 1, 1])
        while (item := s.next_item("ann")) is not None:
            if item["kind"] == "pair":
                a, b = item["a"]["completion"], item["b"]["completion"]
                s.rate("ann", item["id"], choice="a" if len(a) > len(b) else "b")
            else:
                s.rate("ann", item["id"], score=5 if len(item["a"]["completion"]) > 5 else 1)
        pairs, scores = examples(s)
    assert (len(pairs), len(scores)) == (24, 4)
    out = tmp_path / "rm"
    assert reward_model_main(["train", "--db", db, "--base", base, "--out", str(out), "--epochs", "8",
                              "--lr", "3e-3", "--batch-size", "8", "--device", "cpu"]) == 0
    meta = json.loads((out / "rlft_reward_model.json").read_text())
    assert meta["epoch_loss"][-1] < 0.5 * meta["epoch_loss"][0]
    assert meta["before"]["pair_accuracy"] < 0.8 and meta["after"]["pair_accuracy"] >= 0.9
    assert meta["after"]["score_mse"] < meta["before"]["score_mse"]
    # a plain transformers load gives the same model
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    m, t = load(out, "cpu")
    assert evaluate(m, t, pairs, scores)["pair_accuracy"] == pytest.approx(meta["after"]["pair_accuracy"])
    assert reward_model_main(["train", "--db", str(tmp_path / "empty.sqlite"), "--base", base,
                              "--out", str(tmp_path / "x")]) == 1  # no ratings: a clear error, no crash
