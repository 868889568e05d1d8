"""``guess_number``: a dialogue game with a scripted user. The user thinks of a number in [low, high]; the model
guesses; the user replies "Higher." or "Lower." until the model finds it or runs out of guesses.

The secret is the row's ``secret`` column when it has one (a dataset fixes the games, so an evaluation replays the
same ones), else drawn from ``reset``'s seed. A turn's guess is the first whole number in it; a turn without one
costs a guess and is answered with a reminder. Reward, on the last turn: ``1 - (k - 1) / max_guesses`` when the
k-th guess finds the number (1 for a first-guess hit, down to ``1 / max_guesses``), 0 when no guess did
(terminated either way: the game is over). Binary search needs at most ceil(log2(high - low + 1)) guesses.
With ``show_range`` the user also says what is left ("Higher. It is from 9 to 16."), so a player need not keep
track of the replies itself.
Write a dataset with ``python -m rlft.envs write guess_number data/guess_number``.
"""

from __future__ import annotations

import random
import re

from ..env import register

NUMBER = re.compile(r"-?\d+")


def opening(low: int, high: int, max_guesses: int) -> str:
    return (f"I am thinking of a whole number from {low} to {high}. Guess it: answer with one number. You have "
            f"{max_guesses} guesses.")


def rows(n: int, seed: int = 0, low: int = 1, high: int = 16, max_guesses: int = 6) -> list[dict]:
    """Games: {prompt, secret} with the secret uniform in [low, high]."""
    rng = random.Random(seed)
    return [{"prompt": opening(low, high, max_guesses), "secret": rng.randint(low, high)} for _ in range(n)]


@register("guess_number")
class GuessNumberEnv:
    """Guess-the-number against a scripted user (see the module's docstring)."""

    def __init__(self, low: int = 1, high: int = 16, max_guesses: int = 6, show_range: bool = False):
        if not low < high or max_guesses < 1:
            raise ValueError(f"guess_number: needs low < high and max_guesses >= 1 (got low={low}, high={high}, "
                             f"max_guesses={max_guesses})")
        self.low, self.high, self.max_guesses, self.show_range = low, high, max_guesses, show_range
        self.secret, self.guesses = low, 0
        self.left = (low, high)   # what the replies so far allow

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        row = (options or {}).get("row") or {}
        secret = row.get("secret")
        if secret is None:
            secret = random.Random(seed).randint(self.low, self.high)
        if isinstance(secret, bool) or not isinstance(secret, int) or not self.low <= secret <= self.high:
            raise ValueError(f"guess_number: the row's secret must be a whole number in [{self.low}, {self.high}], "
                             f"got {secret!r}")
        self.secret, self.guesses, self.left = secret, 0, (self.low, self.high)
        return opening(self.low, self.high, self.max_guesses), {"secret": secret}

    def step(self, action: str):
        self.guesses += 1
        found = NUMBER.search(action)
        guess = int(found.group()) if found else None
        info = {"guesses": self.guesses, "guess": guess, "secret": self.secret}
        if guess == self.secret:
            return None, 1.0 - (self.guesses - 1) / self.max_guesses, True, False, info
        if self.guesses >= self.max_guesses:
            return None, 0.0, True, False, info
        left = self.max_guesses - self.guesses
        lo, hi = self.left
        if guess is None:
            reply = f"Please answer with one whole number from {self.low} to {self.high}."
        else:
            reply = "Higher." if guess < self.secret else "Lower."
            lo, hi = (max(lo, guess + 1), hi) if guess < self.secret else (lo, min(hi, guess - 1))
            self.left = (lo, hi)
        if self.show_range:
            reply += f" It is from {lo} to {hi}."
        return f"{reply} {left} guess{'es' if left > 1 else ''} left.", 0.0, False, False, info
