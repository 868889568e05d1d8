"""Values on the wire between the supervisor and the worker, and the framing of messages.

A value crosses as a *literal tree*: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, or a
tuple whose first item is a tag string. ``ascii()`` writes the tree; ``loads`` parses it with the
compiler's parser and accepts only constants, tuples and negative numbers: reading can only ever build
literals, never run code or call a method of the sender's choosing.

    list [1, 2]        -> ("l", 1, 2)             tuple     -> ("t", ...)
    set / frozenset    -> ("s", ...) / ("f", ...) dict      -> ("d", k1, v1, k2, v2, ...)
    bytearray          -> ("B", b"...")           complex   -> ("c", re, im)
    huge int           -> ("I", "hex digits")     nan, inf  -> ("F", "nan")
    anything else      -> ("h", id, "type name")  an opaque handle to an object left in the worker

Only exact builtin types are encoded as values (``type(v) is list``, never ``isinstance``), so a
subclass with a forged ``__eq__`` stays in the worker behind a handle, and what the trusted side
decodes is always a genuine builtin built by trusted code.
"""

from __future__ import annotations

import _ast
import os
import select
import time

MAX_MSG = 4 << 20        # bytes in one message
MAX_ITEMS = 1_000_000    # values in one encoded tree
MAX_DEPTH = 100          # nesting of one encoded tree


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed message."""


class Unencodable(Exception):
    """Too big or too deep to send as a value."""


def encode(v, other):
    """Value -> literal tree. ``other(v)`` is called for anything that is not a builtin value.

    Instances of *subclasses* of the builtin types (``Counter``, ``OrderedDict``, a namedtuple, an
    ``IntEnum``, ``class Evil(int)``) cross as the value their builtin part really holds, read with
    the builtin type's own methods (``dict.copy``, ``int.__int__``): overrides of ``__eq__``,
    ``__iter__``... never run on the other side, which gets a genuine ``dict``/``int``."""
    budget = [MAX_ITEMS]

    def enc(v, depth):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise Unencodable("value too large or too deeply nested")
        t = type(v)
        if v is None or t is bool or t is str or t is bytes:
            return v
        if t is int:
            return v if v.bit_length() <= 8000 else ("I", format(v, "x"))
        if t is float:
            return v if v - v == 0 else ("F", repr(v))           # nan and +-inf are not literals
        if t is list or t is tuple or t is set or t is frozenset:
            tag = "l" if t is list else "t" if t is tuple else "s" if t is set else "f"
            return (tag, *[enc(x, depth + 1) for x in v])
        if t is dict:
            out = ["d"]
            for k, x in v.items():
                out += (enc(k, depth + 1), enc(x, depth + 1))
            return tuple(out)
        if t is bytearray:
            return ("B", bytes(v))
        if t is complex:
            return ("c", enc(v.real, depth + 1), enc(v.imag, depth + 1))
        for base, plain in _BASES:
            if issubclass(t, base):             # the real type: a ``__class__`` property cannot lie here
                return enc(plain(v), depth)
        return other(v)

    return enc(v, 0)


_BASES = ((str, str.__str__), (int, int.__int__), (float, float.__float__), (bytes, bytes.__bytes__),
          (dict, dict.copy), (list, list.copy), (tuple, lambda v: tuple.__getitem__(v, slice(None))),
          (set, set.copy), (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
          (complex, complex.__complex__), (bytearray, bytearray))


def decode(tree, handle):
    """Literal tree -> value; ``handle(id, type_name)`` builds the object for ``("h", ...)``. Raises
    ProtocolError on anything malformed."""

    def dec(x, depth):
        if depth > MAX_DEPTH + 2:
            raise ProtocolError("too deep")
        t = type(x)
        if x is None or t is bool or t is int or t is float or t is str or t is bytes:
            return x
        if t is not tuple or not x or type(x[0]) is not str:
            raise ProtocolError(f"unexpected {t.__name__}")
        tag, items = x[0], x[1:]
        try:
            if tag in ("l", "t", "s", "f"):
                vals = [dec(i, depth + 1) for i in items]
                return vals if tag == "l" else tuple(vals) if tag == "t" else set(vals) if tag == "s" \
                    else frozenset(vals)
            if tag == "d" and len(items) % 2 == 0:
                vals = [dec(i, depth + 1) for i in items]
                return dict(zip(vals[::2], vals[1::2]))
            if tag == "B" and len(items) == 1 and type(items[0]) is bytes:
                return bytearray(items[0])
            if tag == "c" and len(items) == 2:
                re, im = dec(items[0], depth + 1), dec(items[1], depth + 1)
                if type(re) is float and type(im) is float:
                    return complex(re, im)
            if tag == "I" and len(items) == 1 and type(items[0]) is str and len(items[0]) < 1_000_000:
                return int(items[0], 16)
            if tag == "F" and len(items) == 1 and items[0] in ("nan", "inf", "-inf"):
                return float(items[0])
            if tag == "h" and len(items) == 2 and type(items[0]) is int and type(items[1]) is str:
                return handle(items[0], items[1])
        except (TypeError, ValueError) as e:       # unhashable set member / dict key, bad hex
            raise ProtocolError(f"bad {tag!r} item: {e}") from None
        raise ProtocolError(f"bad tag {tag!r}")

    return dec(tree, 0)


def dumps(tree) -> bytes:
    return ascii(tree).encode()


_SCALARS = (type(None), bool, int, float, str, bytes)


def loads(data: bytes):
    """Parse a literal tree (what ``ast.literal_eval`` would, restricted to our types; ``_ast`` is a
    builtin module, ``ast`` would cost milliseconds of import per sandbox)."""
    try:
        tree = compile(data.decode("ascii"), "<wire>", "eval", _ast.PyCF_ONLY_AST, dont_inherit=True)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, OverflowError,
            UnicodeDecodeError) as e:
        raise ProtocolError(f"unreadable message ({type(e).__name__})") from None

    def lit(node, depth):
        t = type(node)
        if t is _ast.Constant and type(node.value) in _SCALARS:
            return node.value
        if t is _ast.Tuple and depth <= MAX_DEPTH + 2:
            return tuple(lit(e, depth + 1) for e in node.elts)
        if t is _ast.UnaryOp and type(node.op) is _ast.USub and type(node.operand) is _ast.Constant \
                and type(node.operand.value) in (int, float):
            return -node.operand.value
        raise ProtocolError(f"unexpected {t.__name__} in a message")

    return lit(tree.body, 0)


# ------------------------------------------------------------------------------------------------ framing

def send(fd: int, payload: bytes, deadline: float | None = None) -> None:
    """Length-prefixed write; with a deadline the fd must be non-blocking."""
    data = memoryview(len(payload).to_bytes(4, "little") + payload)
    while data:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            continue
        data = data[n:]


def _read(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        try:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv(fd: int, deadline: float | None = None) -> bytes:
    n = int.from_bytes(_read(fd, 4, deadline), "little")
    if n > MAX_MSG:
        raise ProtocolError(f"message of {n} bytes")
    return _read(fd, n, deadline)
