"""What runs inside the sandbox: a trusted *supervisor* and the untrusted *worker* it forks.

    host --stdin: config, then job (secret, program, tests)--> supervisor --fork--> worker
    host <--stdout: "READY <pid>", then "RLFT <secret>" + result-- supervisor <--pipes--> worker

The worker is forked before the supervisor reads the job (stdin is read frame by frame with exact
reads, nothing ahead), and its first act is to replace its stdin: the secret and the tests were never
in its memory. It closes every fd but its two pipes, takes its rlimits, drops capabilities, confines
itself (Landlock, seccomp), and only then receives the program and runs it.

The tests run in the supervisor, which never executes a line of the program. Every name the test
code needs from the program (``candidate``, the entry point, ``Pair``...) is a ``Remote`` handle:
calling it sends the arguments to the worker, which calls the real function and sends back the
return value as a literal tree (see ``_wire``). So ``assert f(2) == 4`` compares a genuine builtin,
built by the supervisor, with 4, inside the supervisor: an always-equal object, a patched
``builtins``/``unittest``/``type``, ``os._exit(0)``, ``SystemExit`` or output that looks like a pass
cannot touch the comparison. Objects that are not plain values stay in the worker behind a handle
whose ``==`` is identity, so they never equal an expected value.

Each ``assert`` statement in the test code is one test (rewritten, via ``ast``, to record its
outcome and continue); test code without any ``assert`` is one test that passes when it runs
through without an exception. See docs/sandbox.md.
"""

from __future__ import annotations

import _signal as signal  # not `signal`: its enum import costs milliseconds per program
import builtins
import marshal
import os
import time

if __name__ != "__main__":  # imported on the host; inside the sandbox the modules share one namespace
    from . import _confine
    from ._wire import MAX_ITEMS, MAX_MSG, ProtocolError, Unencodable, decode, dumps, encode, loads, recv, send
else:
    class _confine:  # the functions of _confine.py, executed just before this file
        nondumpable, subreaper, drop_capabilities = nondumpable, subreaper, drop_capabilities  # noqa: F821
        landlock, seccomp = landlock, seccomp  # noqa: F821


# -------------------------------------------------------------------------------------------- the worker

def _close_fds(keep):
    import resource
    keep, lo = sorted(set(keep)), 0
    hi = min(max(1 << 16, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), 1 << 20)
    for k in keep:
        if k > lo:                  # never an empty range: closerange(0, 0) closes every fd on 3.11
            os.closerange(lo, k)
        lo = k + 1
    os.closerange(lo, hi)


def worker_main(cfg, rfd, wfd):
    """Confine this process, then serve the supervisor's requests. Never returns."""
    import resource
    os.setpgid(0, 0)                        # its own group: killed as a whole, and it cannot leave it
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _close_fds([0, 1, 2, rfd, wfd])
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, cfg["cpu_s"]),
              (resource.RLIMIT_AS, cfg["memory_mb"] << 20), (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20),
              (resource.RLIMIT_NOFILE, cfg["nofile"])]
    if cfg["nproc"]:
        limits.append((resource.RLIMIT_NPROC, cfg["nproc"]))
    for which, val in limits:
        hard = val + 1 if which == resource.RLIMIT_CPU else val    # SIGXCPU first, then SIGKILL
        resource.setrlimit(which, (val, hard))
    _confine.drop_capabilities()
    if cfg["landlock"]:
        _confine.landlock(cfg["read_paths"], [os.getcwd(), "/dev/null"], cfg["landlock"])
    if cfg["seccomp"]:
        _confine.seccomp(os.getpid(), cfg["allow_fork"])
    _serve(rfd, wfd)


def _serve(rfd, wfd):
    import itertools
    objs, ns = [], {"__name__": "solution", "__builtins__": builtins}

    def register(v):
        objs.append(v)
        return ("h", len(objs) - 1, type(v).__name__[:60])

    def arg(tree):
        return decode(tree, lambda i, _name: objs[i])

    ops = {"iter": lambda o: list(itertools.islice(iter(o), MAX_ITEMS)), "len": len, "bool": bool,
           "str": str, "repr": repr, "getitem": lambda o, k: o[k], "contains": lambda o, x: x in o}
    while True:
        try:
            msg = loads(recv(rfd))
        except (EOFError, ProtocolError):
            os._exit(0)
        try:
            kind = msg[0]
            if kind == "exec":
                exec(compile(msg[1], "solution.py", "exec", dont_inherit=True), ns)  # noqa: S102 -- the worker's job
                out = None
            elif kind == "get":
                if msg[1] not in ns:
                    raise NameError(f"name {msg[1]!r} is not defined")
                out = ns[msg[1]]
            elif kind == "call":
                out = objs[msg[1]](*arg(msg[2]), **arg(msg[3]))
            elif kind == "attr":
                out = getattr(objs[msg[1]], msg[2])
            else:
                out = ops[msg[2]](objs[msg[1]], *arg(msg[3]))
            try:
                reply = dumps(("ok", encode(out, register)))
                if len(reply) > MAX_MSG - 64:
                    raise Unencodable("return value too large")
            except Unencodable:                 # too big or too deep to copy: it stays here
                reply = dumps(("ok", register(out)))
        except BaseException as e:  # noqa: BLE001 -- everything the program raises goes back as data
            try:
                text = str(e)[:300]
            except BaseException:  # noqa: BLE001
                text = ""
            reply = dumps(("err", type(e).__name__[:60], text))
        send(wfd, reply)


# ---------------------------------------------------------------------------------------- the supervisor

class _Stop(BaseException):
    """The worker is gone or time is up: no further test can run. Not an Exception, so test code's
    ``except Exception`` cannot swallow it."""


class Remote:
    """An object that lives in the worker. ``==`` is identity: it never equals a trusted value."""

    __slots__ = ("_id", "_link", "_type")

    def __init__(self, link, hid, type_name):
        self._link, self._id, self._type = link, hid, type_name

    def __call__(self, *args, **kwargs):
        return self._link.request("call", self._id, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._link.request("attr", self._id, name)

    def _op(self, op, *args, want=None):
        out = self._link.request("op", self._id, op, args)
        if want is not None and type(out) is not want:
            raise TypeError(f"{op} of a {self._type} gave {type(out).__name__}")
        return out

    def __iter__(self):
        return iter(self._op("iter", want=list))

    def __len__(self):
        return self._op("len", want=int)

    def __bool__(self):
        return self._op("bool", want=bool)

    def __getitem__(self, key):
        return self._op("getitem", key)

    def __contains__(self, item):
        return self._op("contains", item, want=bool)

    def __str__(self):
        return self._op("str", want=str)

    def __repr__(self):
        return self._op("repr", want=str)


_SIGNAL_NAMES = {v: k for k, v in vars(signal).items() if k.startswith("SIG") and "_" not in k and type(v) is int}
_SAFE_ERRORS = {n: getattr(builtins, n) for n in dir(builtins)
                if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), Exception)}


class Link:
    """The supervisor's end of the pipes, with the run's deadline and what went wrong so far."""

    def __init__(self, pid, wfd, rfd, cpu_s, timeout_s):
        self.pid, self.wfd, self.rfd, self.cpu_s = pid, wfd, rfd, cpu_s
        self.deadline = time.monotonic() + timeout_s
        self.stop = None            # (status, detail) once the worker is gone or time is up
        self.errors = []            # what the program raised during the tests
        self.memory = False

    def _gone(self, status, detail):
        if self.stop is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.stop = (status, detail)
        raise _Stop(detail)

    def _worker_death(self):
        end = time.monotonic() + 0.5
        try:
            while (got := os.wait4(self.pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > end:          # alive, but it closed its end of the pipes
                    return "killed", "the program closed its result channel"
                time.sleep(0.005)
        except ChildProcessError:
            return "killed", "the program's process vanished"
        _, st, ru = got
        if os.WIFEXITED(st):
            code = os.WEXITSTATUS(st)
            if code in (70, 71):
                return "killed", "sandbox set-up failed in the worker"
            return "runtime_error", f"the program exited (code {code}) before the tests finished"
        sig = os.WTERMSIG(st)
        if sig == signal.SIGXCPU or ru.ru_utime + ru.ru_stime >= self.cpu_s - 0.05:
            return "timeout", "CPU time limit"
        return "killed", f"the program died from signal {_SIGNAL_NAMES.get(sig, str(sig))}"

    def request(self, kind, *args):
        if self.stop is not None:
            raise _Stop(self.stop[1])

        def other(v):
            if type(v) is Remote and v._link is self:
                return ("h", v._id, v._type)
            raise TypeError(f"cannot pass a {type(v).__name__} to the program")
        if kind == "call":
            args = (args[0], encode(args[1], other), encode(args[2], other))
        elif kind == "op":
            args = (args[0], args[1], encode(args[2], other))
        try:
            send(self.wfd, dumps((kind, *args)), self.deadline)
            reply = loads(recv(self.rfd, self.deadline))
        except TimeoutError:
            self._gone("timeout", "time limit")
        except (EOFError, BrokenPipeError):
            self._gone(*self._worker_death())
        except ProtocolError as e:
            self._gone("killed", f"the program broke the result protocol: {e}")
        try:
            if type(reply) is tuple and reply and reply[0] == "ok" and len(reply) == 2:
                return decode(reply[1], lambda i, name: Remote(self, i, name))
            if type(reply) is tuple and len(reply) == 3 and reply[0] == "err" and type(reply[1]) is str \
                    and type(reply[2]) is str:
                name, text = reply[1], reply[2]
            else:
                raise ProtocolError("bad reply")
        except ProtocolError as e:
            self._gone("killed", f"the program broke the result protocol: {e}")
        if name == "SandboxSetupError" and kind == "exec":
            self._gone("killed", f"sandbox set-up failed in the worker: {text}")
        if kind in ("exec", "call"):
            self.errors.append(f"{name}: {text}")
            self.memory |= name == "MemoryError"
        raise _SAFE_ERRORS.get(name, RuntimeError)(f"{name} in the program: {text}")


def _stdlib_module(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def supervise(job, link):
    """Run the job's tests against the program in the worker; returns (passed, total, status, detail)."""
    plan = marshal.loads(job["plan"])
    total = plan["total"]
    program, entry = job["program"], job.get("entry_point")
    try:
        compile(program, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
        return 0, total, "syntax_error", f"{type(e).__name__}: {e}"[:300]
    results, touched, looped = {}, set(), plan["looped"]

    def rec(idx, ok):
        results[idx] = results.get(idx, True) and ok
        touched.add(idx)

    def settle(lo, hi):
        """The unit holding asserts lo..hi-1 did not finish: what it did not check, it did not pass."""
        for idx in range(lo, hi):
            if idx not in results or (idx in touched and idx in looped):
                results[idx] = False

    def check_call():
        try:
            candidate = link.request("get", entry)
        except NameError:
            link.errors.append(f"NameError: the program defines no {entry!r}")
            raise
        ns["check"](candidate)

    ns = {"__name__": "__rlft_tests__", "__builtins__": builtins, "__rlft_rec__": rec,
          "__rlft_bool__": bool, "__rlft_stop__": _Stop}
    calls = list(zip(plan["units"], plan["ranges"]))
    if entry and plan["has_check"]:
        calls.append((check_call, plan["check_range"]))
    clean, detail, done = True, "", 0
    try:
        link.request("exec", program)
        for name in plan["free"]:
            mod = _stdlib_module(name) if name in plan["modules"] and name != entry else None
            if mod is not None:
                ns[name] = mod                  # `math.isclose` in a test is the real one
                continue
            try:
                ns[name] = link.request("get", name)
            except NameError:
                link.errors.append(f"NameError: the program defines no {name!r}")
        for unit, (lo, hi) in calls:
            touched.clear()
            try:
                unit() if callable(unit) else exec(unit, ns)  # noqa: S102 -- trusted test code
            except _Stop:
                settle(lo, hi)
                raise
            except BaseException as e:  # noqa: BLE001 -- a failing test, from the program or the test code
                settle(lo, hi)
                clean = False
                detail = detail or f"{type(e).__name__}: {e}"[:300]
            finally:
                done += 1
    except _Stop:
        clean = False
    except BaseException as e:  # noqa: BLE001 -- the program raised at import time
        clean = False
        detail = f"{type(e).__name__}: {e}"[:300]
    touched.clear()
    for _, (lo, hi) in calls[done:]:            # units that never ran
        settle(lo, hi)
    n = plan["n_asserts"]
    passed = sum(results.get(i, True) for i in range(n)) if n else int(clean and link.stop is None)
    if passed == total:
        return passed, total, "ok", ""
    if link.stop is not None:
        return passed, total, link.stop[0], link.stop[1][:300]
    if link.memory:
        return passed, total, "memory", (link.errors[0] if link.errors else detail)[:300]
    if link.errors:
        return passed, total, "runtime_error", link.errors[0][:300]
    first = next((i for i in range(n) if not results.get(i, True)), None)
    what = f"; first: {plan['sources'][first]}" if first is not None else f"; {detail}" if detail else ""
    return passed, total, "ok", f"{total - passed} of {total} tests failed{what}"[:300]


def _read_frame(fd):
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, n - len(buf))      # unbuffered: nothing is read ahead of the frame
            if not chunk:
                os._exit(3)
            buf += chunk
        return buf
    return read(int.from_bytes(read(8), "little"))


def _on_alarm(signum, frame):
    raise _Stop("time limit")


def main():
    _confine.nondumpable()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
    cfg = marshal.loads(_read_frame(0))
    _confine.subreaper()
    _confine.drop_capabilities()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w1)
            os.close(r2)
            worker_main(cfg, r1, w2)
        except BaseException as e:  # noqa: BLE001 -- tell the supervisor why, never run unconfined
            try:
                send(w2, dumps(("err", "SandboxSetupError", f"{type(e).__name__}: {e}"[:300])))
            finally:
                os._exit(71)
        os._exit(70)
    os.close(r1)
    os.close(w2)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.set_blocking(w1, False)
    os.set_blocking(r2, False)
    os.write(1, f"READY {pid}\n".encode())
    job = marshal.loads(_read_frame(0))
    link = Link(pid, w1, r2, cfg["cpu_s"], job["timeout_s"])
    signal.signal(signal.SIGALRM, lambda *_: link._gone("timeout", "time limit"))
    signal.setitimer(signal.ITIMER_REAL, job["timeout_s"] + 0.05)   # for test code that loops by itself
    try:
        try:
            result = supervise(job, link)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Stop:
        result = (0, job["total"], "timeout", "time limit")
    # Kill the worker's process group (with seccomp nothing can have left it) and reap it, including
    # orphans re-parented to us: when the host reads the result, no process of the run is left. In
    # bwrap's PID namespace (we are its process 2, under bwrap's init) kill(-1) reaches every process
    # of the run, also one that left the group where no seccomp filter stopped it.
    in_own_pidns = cfg["pidns"] and os.getpid() == 2
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        try:
            os.kill(-1, signal.SIGKILL) if in_own_pidns else os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.001)
        except ChildProcessError:
            break
    passed, total, status, detail = result
    out = b"RLFT " + job["secret"].encode() + b"\n" + marshal.dumps((int(passed), int(total), str(status),
                                                                    str(detail)))
    os.write(1, out)
    os._exit(0)


if __name__ == "__main__":
    main()
