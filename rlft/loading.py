"""Loading a user's object named in a config: ``package.module:name`` or ``path/to/file.py:name`` (rewards,
environments). One place for the import and its errors, which name the config value and the file."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path


def load_object(spec: str, label: str, *, kind: str = "callable", error: type[Exception] = ValueError):
    """The callable ``spec`` names (``target:attr``, where target is a module or a .py file). ``label`` starts each
    error message (e.g. ``reward 'x.py:f'``); ``kind`` says what was expected (``callable``, ``class``)."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise error(f"{label}: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"rlft_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 -- the user's file: say which one failed and how
            raise error(f"{label}: importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise error(f"{label}: cannot import module {target!r} ({e})") from e
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise error(f"{label}: {target} has no {kind} {attr!r}")
    return obj
