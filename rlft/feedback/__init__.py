"""Human feedback: the SQLite store of samples and ratings, the rating web page, reward models fitted on the
ratings. See docs/feedback.md.

Importing this package is cheap (sqlite3 only): the web server (``fastapi``/``uvicorn``, the ``web`` extra)
and torch/transformers are imported where they are used.
"""

from .store import Conflict, Invalid, NotFound, Store

__all__ = ["Conflict", "Invalid", "NotFound", "Store"]
