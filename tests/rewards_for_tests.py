"""Rewards with signal on an untrained tiny model (random bytes): used by the trainer tests."""


def ascii_frac(prompts, completions, **_):
    """Fraction of the completion's characters that are ASCII letters or digits (0 for an empty one)."""
    return [sum(ch.isascii() and ch.isalnum() for ch in c) / max(1, len(c)) for c in completions]
