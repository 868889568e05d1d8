"""``compute``: weighted sums, None semantics, group normalisation, NaN handling, dense rewards, concurrency
(threads and asyncio), reported stats, and start-up column checks. Expected values worked out by hand."""

import asyncio
import math
import time

import pytest
import torch

from rlft.config import describe
from rlft.errors import ConfigError
from rlft.rewards import Reward, RewardError, check_columns, compute, report, required_columns, resolve


def const(values):
    def fn(prompts, completions, **_):
        return list(values)
    return fn


def run(rewards, n=3, lengths=None, **kw):
    return compute(rewards, ["p"] * n, ["c"] * n, lengths or [2] * n, {}, **kw)


def test_weighted_sum_on_last_token():
    res = run([Reward("a", const([1, 2, 3]), weight=2.0), Reward("b", const([10, 0, -1]), weight=0.5)])
    # sample 0: 2*1 + 0.5*10 = 7; sample 1: 4 + 0 = 4; sample 2: 6 - 0.5 = 5.5 -- on the last of 2 tokens
    assert res.token_rewards == [[0.0, 7.0], [0.0, 4.0], [0.0, 5.5]]
    m = res.metrics()
    assert m["reward/a"] == 2.0 and m["reward/b"] == 3.0 and m["reward/invalid_frac"] == 0.0


def test_none_is_left_out_of_the_mean_and_zero_in_the_sum():
    res = run([Reward("a", const([1.0, None, 3.0])), Reward("b", const([1.0, 1.0, 1.0]))])
    assert res.token_rewards == [[0.0, 2.0], [0.0, 1.0], [0.0, 4.0]]
    m = res.metrics()
    assert m["reward/a"] == 2.0                    # (1 + 3) / 2, not / 3
    assert m["reward/a_none_frac"] == pytest.approx(1 / 3)
    assert math.isnan(run([Reward("a", const([None] * 3))]).metrics()["reward/a"])


def test_group_normalisation_by_hand():
    # group [1, 2, 3]: mean 2, population std sqrt(2/3) -> z = -+1/sqrt(2/3) = -+1.2247; group [5, 5, 5] -> 0
    res = compute([Reward("a", const([1, 2, 3, 5, 5, 5]))], ["p"] * 6, ["c"] * 6, [1] * 6, {},
                  normalize="group", group_size=3)
    z = 1 / math.sqrt(2 / 3)
    assert [t[-1] for t in res.token_rewards] == pytest.approx([-z, 0, z, 0, 0, 0], abs=1e-5)
    assert res.components["a"] == [1, 2, 3, 5, 5, 5]  # the log keeps raw values


def test_group_normalisation_skips_none_and_invalid_samples():
    # "a" is NaN on sample 0 -> dropped; "b" = [100, 1, 3]: stats over samples 1, 2 only: mean 2, std 1 -> -1, +1
    res = run([Reward("a", const([float("nan"), 0, 0]), weight=0.0), Reward("b", const([100, 1, 3]))],
              on_error="drop", normalize="group", group_size=3)
    assert res.invalid == [True, False, False]
    assert [t[-1] for t in res.token_rewards] == pytest.approx([0, -1, 1], abs=1e-5)
    res = run([Reward("b", const([None, 1, 3]))], normalize="group", group_size=3)
    assert [t[-1] for t in res.token_rewards] == pytest.approx([0, -1, 1], abs=1e-5)


def test_nan_raises_naming_reward_and_sample_or_drops():
    with pytest.raises(RewardError, match=r"reward 'bad' at step 7 gave nan for sample 1"):
        run([Reward("bad", const([0.0, float("nan"), 1.0]))], step=7)
    res = run([Reward("bad", const([0.0, float("inf"), 1.0])), Reward("ok", const([1, 1, 1]))], on_error="drop")
    assert res.invalid == [False, True, False]
    assert res.token_rewards[1] == [0.0, 0.0]        # an invalid sample gets nothing
    assert res.metrics()["reward/ok"] == 1.0 and res.metrics()["reward/invalid_frac"] == pytest.approx(1 / 3)
    # a string is not a number, even one that looks like it
    with pytest.raises(RewardError, match="gave '0.5'"):
        run([Reward("s", const(["0.5", 1, 1]))])


def test_a_raising_reward():
    def boom(prompts, completions, **_):
        raise KeyError("x")
    with pytest.raises(RewardError, match=r"reward 'boom' raised at step 3: KeyError"):
        run([Reward("boom", boom)], step=3)
    res = run([Reward("boom", boom), Reward("ok", const([1, 1, 1]))], on_error="drop")
    assert res.invalid == [True] * 3
    with pytest.raises(ValueError, match="on_error"):
        run([Reward("ok", const([1, 1, 1]))], on_error="ignore")


def test_wrong_shape_and_duplicate_names():
    with pytest.raises(RewardError, match="returned list of length 2; expected a list of 3"):
        run([Reward("short", const([1, 2]))])
    with pytest.raises(ValueError, match="unique"):
        run([Reward("a", const([1, 1, 1])), Reward("a", const([1, 1, 1]))])


def test_arrays_and_tensors_are_accepted():
    res = run([Reward("t", lambda prompts, completions, **_: torch.tensor([1.0, 2.0, 3.0]))])
    assert [t[-1] for t in res.token_rewards] == [1.0, 2.0, 3.0]


def test_dense_rewards():
    dense = const([[0.5, 0.5], None, [1.0, -1.0, 2.0]])
    res = compute([Reward("d", dense, weight=2.0), Reward("s", const([1, 1, 1]))], ["p"] * 3, ["c"] * 3,
                  [2, 2, 3], {})
    # dense values go token by token (times the weight); the sequence reward sits on the last token
    assert res.token_rewards == [[1.0, 2.0], [0.0, 1.0], [2.0, -2.0, 5.0]]
    assert res.components["d"] == [1.0, None, 2.0]  # logged as the per-sequence sum
    with pytest.raises(RewardError, match="dense reward of 3 values for 2 tokens"):
        compute([Reward("d", const([[1, 2, 3]]))], ["p"], ["c"], [2], {})
    with pytest.raises(RewardError, match="non-number"):
        compute([Reward("d", const([[1, None]]))], ["p"], ["c"], [2], {})


def test_dense_group_normalisation_keeps_the_token_shape():
    # sums 2 and 4: mean 3, std 1 -> z = -1, +1; tokens rescaled to sum to z: [1,1]*(-1/2), [1,3]*(1/4)
    res = compute([Reward("d", const([[1.0, 1.0], [1.0, 3.0]]))], ["p"] * 2, ["c"] * 2, [2, 2], {},
                  normalize="group", group_size=2)
    assert res.token_rewards[0] == pytest.approx([-0.5, -0.5], abs=1e-5)
    assert res.token_rewards[1] == pytest.approx([0.25, 0.75], abs=1e-5)


def test_columns_args_completion_ids_and_step_arrive():
    seen = {}

    def fn(prompts, completions, reference, completion_ids, step, scale=1.0, **_):
        seen.update(reference=reference, ids=completion_ids, step=step, scale=scale)
        return [scale] * len(completions)

    compute([Reward("f", fn, args={"scale": 2.0})], ["p"], ["c"], [1], {"reference": ["r"], "other": [0]},
            completion_ids=[[5]], step=4)
    assert seen == {"reference": ["r"], "ids": [[5]], "step": 4, "scale": 2.0}


def test_slow_sync_rewards_run_concurrently_and_are_timed():
    def slow(prompts, completions, **_):
        time.sleep(0.3)
        return [1.0] * len(completions)
    t = time.perf_counter()
    res = run([Reward("a", slow), Reward("b", slow), Reward("c", slow)])
    assert time.perf_counter() - t < 0.8  # 3 x 0.3 s one after the other would be 0.9 s
    m = res.metrics()
    assert m["perf/reward_seconds"] >= 0.3 and m["perf/reward_seconds/a"] >= 0.3


def test_async_rewards_are_awaited_together_on_one_loop():
    loops = []

    async def slow(prompts, completions, **_):
        loops.append(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.3)
        report(calls=1)
        return [2.0] * len(completions)

    class Judge:  # an object with an async __call__ counts too
        async def __call__(self, prompts, completions, **_):
            loops.append(id(asyncio.get_running_loop()))
            await asyncio.sleep(0.3)
            return [1.0] * len(completions)

    t = time.perf_counter()
    res = run([Reward("a", slow), Reward("b", Judge()), Reward("c", const([0, 0, 0]))])
    assert time.perf_counter() - t < 0.55
    assert len(loops) == 2 and loops[0] == loops[1]
    assert [x[-1] for x in res.token_rewards] == [3.0] * 3
    assert res.metrics()["reward/a/calls"] == 1.0 and "reward/b/calls" not in res.metrics()


def test_async_reward_inside_a_running_event_loop():
    async def one(prompts, completions, **_):
        return [1.0] * len(completions)

    async def main():  # e.g. a notebook: compute is called while a loop runs
        return run([Reward("a", one)])
    assert asyncio.run(main()).token_rewards[0] == [0.0, 1.0]


def test_report_is_private_to_each_reward():
    def a(prompts, completions, **_):
        report(failures=2, timeouts=1)
        time.sleep(0.05)
        return [1.0] * len(completions)

    def b(prompts, completions, **_):
        report(failures=5)
        return [1.0] * len(completions)

    m = run([Reward("a", a), Reward("b", b)]).metrics()
    assert m["reward/a/failures"] == 2 and m["reward/a/timeouts"] == 1 and m["reward/b/failures"] == 5
    report(ignored=1)  # outside compute: nothing happens


def test_check_columns_names_the_reward_and_the_column():
    def needs_ref(prompts, completions, reference, **_):
        return [0.0] * len(completions)
    assert required_columns(needs_ref, {}) == ["reference"]
    check_columns([Reward("bleu", needs_ref)], ["prompt", "reference"])
    with pytest.raises(ValueError, match=r"reward 'bleu' \(fn needs_ref\) needs 'reference'.*columns: answer, prompt"):
        check_columns([Reward("bleu", needs_ref)], ["prompt", "answer"])
    check_columns([Reward("bleu", needs_ref, args={"reference": "fixed"})], ["prompt"])


def test_rewards_are_called_by_keyword_trl_style():
    seen = {}

    def trl_style(completions, **kwargs):  # TRL's shape: no prompts parameter; the rest arrives in kwargs
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    def named(completions, reference, prompts):  # any order: everything is a keyword
        return [float(c == r) for c, r in zip(completions, reference)]

    res = compute([Reward("trl", trl_style), Reward("named", named)], ["p1", "p2"], ["ab", "c"], [1, 1],
                  {"reference": ["ab", "x"]}, completion_ids=[[1, 2], [3]], step=2)
    assert res.components == {"trl": [2.0, 1.0], "named": [1.0, 0.0]}
    assert seen == {"prompts": ["p1", "p2"], "reference": ["ab", "x"], "completion_ids": [[1, 2], [3]]}
    check_columns([Reward("named", named)], ["reference"])  # it takes exactly what it receives


def test_check_columns_rejects_a_signature_that_cannot_take_the_call():
    def no_kwargs(prompts, completions):
        return [0.0] * len(completions)

    def positional_only(prompts, completions, /, **kw):
        return [0.0] * len(completions)

    def odd_name(samples, **kw):
        return [0.0] * len(samples)

    with pytest.raises(ConfigError, match=r"reward 'n' \(fn no_kwargs\) takes no \*\*kwargs, so it cannot receive "
                                          r"answer.*its signature is no_kwargs\(prompts, completions\); it would "
                                          r"receive the keywords prompts, completions, answer"):
        check_columns([Reward("n", no_kwargs)], ["answer"])
    check_columns([Reward("n", no_kwargs)], [])
    with pytest.raises(ConfigError, match=r"reward 'p' \(fn positional_only\) takes prompts, "
                                          r"completions positionally only, but rewards are called by keyword"):
        check_columns([Reward("p", positional_only)], [])
    with pytest.raises(ConfigError, match=r"reward 'o' \(fn odd_name\) needs 'samples'.*its signature is "
                                          r"odd_name\(samples, \*\*kw\)"):
        check_columns([Reward("o", odd_name)], ["prompt"])


def test_unknown_reward_name_suggests_the_nearest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown reward 'blue'; did you mean 'bleu'\? \(built-in names: .*chrf"):
        resolve("blue")
    with pytest.raises(ValueError, match=r"unknown reward 'zzzz' \(built-in names"):
        resolve("zzzz")


def test_error_messages_name_the_real_config_key():
    def boom(prompts, completions, **_):
        raise KeyError("x")
    with pytest.raises(RewardError, match=r"Set rewards\.on_error: drop"):
        run([Reward("boom", boom)])
    with pytest.raises(RewardError, match=r"Set rewards\.on_error: drop"):
        run([Reward("bad", const([float("nan")] * 3))])
    assert "rewards.on_error" in [row[0] for row in describe()]  # the key the messages name exists
