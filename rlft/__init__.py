"""rlft: policy-gradient (REINFORCE-family) fine-tuning for language models."""

__version__ = "0.1.0"

from . import rewards  # noqa: E402

__all__ = ["rewards", "__version__"]
