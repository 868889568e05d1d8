"""The errors rlft raises for bad input. Each message names the problem (the file, line, key or value) and what to
do; the CLI prints it without a traceback. This module imports nothing of rlft, so every layer can raise them."""


class ConfigError(ValueError):
    """A config key, value or combination that cannot be used; the message names it."""


class DataError(ValueError):
    """A dataset file or row that cannot be used; the message names the file and line."""


class RewardError(RuntimeError):
    """A reward failed (raised, returned NaN/inf, or returned the wrong shape)."""


class RunError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""
