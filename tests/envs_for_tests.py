"""Scripted environments for the multi-turn tests (tests/test_episodes.py, tests/test_env_contract.py): plain
Gymnasium-style classes, loadable as ``env.cls: tests/envs_for_tests.py:Counting``."""

import asyncio


def ascii_frac(text: str) -> float:
    """tests/rewards_for_tests.py's ascii_frac of one text: the fraction of ASCII letters or digits."""
    return sum(ch.isascii() and ch.isalnum() for ch in text) / max(1, len(text))


class Counting:
    """A counting game: the first observation is the row's prompt; the environment replies ``reply`` ``replies``
    times, then ends the episode. Each turn's reward is ascii_frac of the model's turn (signal on an untrained
    tiny model). ``replies=0``: one turn, the single-turn path's reward exactly."""

    def __init__(self, replies: int = 2, reply: str = "again", role: str = "user"):
        self.replies, self.reply, self.role = replies, reply, role

    def reset(self, *, seed=None, options=None):
        self.left, self.seed = self.replies, seed
        return options["row"]["prompt"], {}

    def step(self, action):
        reward = ascii_frac(action)
        if self.left == 0:
            return None, reward, True, False, {}
        self.left -= 1
        obs = self.reply if self.role == "user" else {"role": self.role, "content": self.reply}
        return obs, reward, False, False, {}


class AsyncCounting(Counting):
    """The same game with ``async def`` reset and step."""

    async def reset(self, *, seed=None, options=None):
        await asyncio.sleep(0)
        return Counting.reset(self, seed=seed, options=options)

    async def step(self, action):
        await asyncio.sleep(0)
        return Counting.step(self, action)


class Endless(Counting):
    """Never terminates: always replies."""

    def step(self, action):
        return self.reply, ascii_frac(action), False, False, {}


class Seeded(Counting):
    """Replies with its reset seed's last digits, so the context (and so the samples) depends on the seed: two
    layouts or a resume that gave another seed would sample differently."""

    def step(self, action):
        obs, reward, term, trunc, info = Counting.step(self, action)
        return (None if obs is None else f"{self.seed % 997} {obs}"), reward, term, trunc, info
