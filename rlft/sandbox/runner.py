"""The host side of the sandbox: start one isolated run per program, read back a result it cannot forge.

One run is one short-lived process tree, started fresh for every program:

    bwrap (namespaces: user, pid, net, ipc, uts, mount; read-only /usr and Python; tmpfs /tmp)
      python -I -S  supervisor  (trusted: runs the tests)
        worker                  (untrusted: runs the program; rlimits, Landlock, seccomp)

Without bubblewrap (not installed, or the kernel refuses it namespaces) the same tree runs without
the first line: see ``isolation()`` and docs/sandbox.md for exactly what that loses.
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

from . import _confine
from ._plan import prepare

log = logging.getLogger("rlft.sandbox")

STATUSES = ("ok", "syntax_error", "runtime_error", "timeout", "memory", "killed")
START_GRACE_S = 5.0          # on top of timeout_s, for interpreter start-up on a loaded machine
MAX_OUTPUT = 1 << 20         # bytes the supervisor may write to the host


@dataclass(frozen=True)
class TestResult:
    """What a program scored. ``status``: ``ok`` (it ran; ``passed < total`` means wrong answers),
    ``syntax_error``, ``runtime_error`` (raised or exited), ``timeout``, ``memory``, ``killed``
    (died from a signal, broke the protocol, or the sandbox failed)."""

    __test__ = False         # not a pytest test class

    passed: int
    total: int
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass
class Job:
    """One program and its tests; the keyword arguments of ``run_tests``."""

    program: str
    tests: str | list[str]
    entry_point: str | None = None
    timeout_s: float | None = None     # None: run_batch's default, else run_tests' default
    memory_mb: int | None = None


# ------------------------------------------------------------------------------------------ the machine

_BOOT = ("import os,marshal\n"
         "def _r(n):\n"
         " b=b''\n"
         " while len(b)<n:\n"
         "  c=os.read(0,n-len(b))\n"
         "  if not c:os._exit(3)\n"
         "  b+=c\n"
         " return b\n"
         "for _c in marshal.loads(_r(int.from_bytes(_r(8),'little'))):exec(_c)\n")

_lock = threading.Lock()
_cache: dict = {}


def _code_frame() -> bytes:
    """The sandbox's own code (three files), compiled once and shipped on stdin: no file of rlft
    needs to be readable inside."""
    if "code" not in _cache:
        here = Path(__file__).parent
        codes = tuple(compile((here / f).read_text(), f"rlft/sandbox/{f}", "exec", dont_inherit=True)
                      for f in ("_confine.py", "_wire.py", "_harness.py"))
        _cache["code"] = _frame(marshal.dumps(codes))
    return _cache["code"]


def _frame(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b


def _python() -> str:
    return os.path.realpath(sys.executable)


def _read_paths() -> list[str]:
    """What the program may read: the interpreter, its standard library, the system libraries."""
    exe = _python()
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/localtime",
             sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe)), exe]
    out = []
    for p in paths:
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out


def _bwrap_argv(tmp_mb: int) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid",
            "65534", "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    for p in _read_paths():
        if p != "/usr" and p.startswith(("/usr/", "/dev/")):
            continue
        if os.path.islink(p) and p.count("/") == 1:             # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(p), p]
        else:
            argv += ["--ro-bind", p, p]
    argv += ["--dev", "/dev"]
    if _bwrap_has("--size"):
        argv += ["--size", str(tmp_mb << 20)]
    # The new root and /dev are tmpfs without a size limit: read-only, so the only writable place is
    # the sized /tmp (which is also the working folder).
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--"]
    return argv


def _bwrap_has(option: str) -> bool:
    if "help" not in _cache:
        try:
            _cache["help"] = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True,
                                            text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            _cache["help"] = ""
    return option in _cache["help"]


def _env(home: str) -> dict[str, str]:
    """The whole environment the program sees: nothing of the trainer's."""
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "MALLOC_ARENA_MAX": "2"}


def _bwrap_works() -> tuple[bool, str]:
    if not shutil.which("bwrap"):
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    try:
        r = subprocess.run(_bwrap_argv(8) + [_python(), "-I", "-S", "-c", "pass"], env=_env("/tmp"),
                           capture_output=True, text=True, timeout=30, start_new_session=True, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"bwrap could not start: {e}"
    if r.returncode != 0:
        return False, f"bwrap cannot create its namespaces here: {r.stderr.strip()[:200]}"
    return True, ""


def bwrap_available() -> tuple[bool, str]:
    """Whether bubblewrap runs here (probed once: installed, and the kernel grants it namespaces), and
    if not, why."""
    with _lock:
        if "bwrap" not in _cache:
            _cache["bwrap"] = _bwrap_works()
        return _cache["bwrap"]


def _mode(use_bwrap: bool | None) -> str:
    """``bwrap`` or ``plain``: ``use_bwrap`` if given, else env ``RLFT_SANDBOX`` (auto|bwrap|plain)."""
    if use_bwrap is None:
        env = os.environ.get("RLFT_SANDBOX", "auto").lower()
        if env not in ("auto", "bwrap", "plain"):
            raise ValueError(f"RLFT_SANDBOX must be auto, bwrap or plain, got {env!r}")
        use_bwrap = None if env == "auto" else env == "bwrap"
    if use_bwrap is False:
        mode = "plain"
    else:
        ok, why = bwrap_available()
        if not ok and use_bwrap:
            raise RuntimeError(f"the sandbox was asked to use bubblewrap, but {why}")
        mode = "bwrap" if ok else "plain"
        if not ok:
            _say_once("nobwrap", logging.WARNING, f"sandbox: falling back to plain processes: {why}")
    info = isolation(mode == "bwrap")
    level = logging.INFO if mode == "bwrap" else logging.WARNING
    _say_once(mode, level, f"sandbox mode {mode}: isolated: {'; '.join(info['isolated'])}. NOT isolated: "
                           f"{'; '.join(info['not_isolated']) or 'nothing listed'}")
    return mode


def _say_once(key: str, level: int, msg: str) -> None:
    with _lock:
        if ("said", key) in _cache:
            return
        _cache[("said", key)] = True
    log.log(level, msg)


def isolation(use_bwrap: bool | None = None) -> dict:
    """What a run isolates on this machine, in words: ``mode``, ``landlock`` (ABI, 0 = none),
    ``seccomp``, ``child_processes``, ``isolated`` and ``not_isolated`` (lists of sentences)."""
    if use_bwrap is None:
        use_bwrap = _mode(None) == "bwrap"
    if "landlock" not in _cache:
        _cache["landlock"] = _confine.landlock_abi()
    abi, sec, root = _cache["landlock"], _confine.seccomp_supported(), os.geteuid() == 0
    iso, not_iso = ["fresh process per program in its own session and process group",
                    "environment scrubbed", "rlimits on CPU time, address space, file size, open files",
                    "results come from a supervisor the program cannot reach"], []
    if use_bwrap:
        iso += ["network (own empty network namespace)", "processes (own PID namespace, torn down at the end)",
                "filesystem (only /usr and the Python installation, read-only; private /tmp)",
                "IPC, hostname, user (uid 65534, no capabilities)"]
    if abi:
        iso.append(f"filesystem (Landlock ABI {abi}: read the interpreter and system libraries, write the "
                   f"working folder only" + ("; no TCP" if abi >= 4 else "")
                   + ("; no signals or abstract sockets outside" if abi >= 6 else "") + ")")
    elif not use_bwrap:
        not_iso.append("filesystem: the program can read every file, and write every file, that "
                       + ("root" if root else "your user") + " can (no Landlock in this kernel)")
    if sec:
        iso.append("seccomp: no sockets, no signals to other processes, no ptrace, no new session, "
                   "no namespaces, no io_uring/bpf/keyrings")
    elif not use_bwrap:
        not_iso.append("network and other processes: this CPU architecture has no seccomp filter here")
    if not use_bwrap:
        not_iso.append("PID namespace: the program runs beside your other processes"
                       + ("" if abi >= 6 and sec else " and may signal or inspect those of its user"))
        if not abi:
            not_iso.append("other processes' /proc entries (command lines; memory of same-user processes "
                           "where ptrace rules allow it)")
    if root or not sec:
        children = "none (running as root, where RLIMIT_NPROC does not apply: seccomp refuses fork)" \
            if sec else "UNLIMITED (root without seccomp: a fork bomb is only stopped by the time limit)"
    else:
        children = "limited by RLIMIT_NPROC"
    return {"mode": "bwrap" if use_bwrap else "plain", "landlock": abi, "seccomp": sec, "root": root,
            "child_processes": children, "isolated": iso, "not_isolated": not_iso}


def _user_tasks() -> int:
    """Threads the current uid runs (RLIMIT_NPROC counts them all, not just ours). Cached for a second."""
    now = time.monotonic()
    hit = _cache.get("tasks")
    if hit and now - hit[0] < 1.0:
        return hit[1]
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    _cache["tasks"] = (now, n)
    return n


# --------------------------------------------------------------------------------------------- one run

def run_tests(program: str, tests: str | list[str], *, entry_point: str | None = None, timeout_s: float = 10.0,
              memory_mb: int = 512, file_mb: int = 16, max_procs: int = 16,
              use_bwrap: bool | None = None) -> TestResult:
    """Run ``program`` against ``tests`` in a fresh sandbox.

    ``tests``: a list of snippets (MBPP ``test_list``: ``["assert f(1) == 2", ...]``) or one string of
    test code; when it defines ``check`` (HumanEval), ``check(<entry_point>)`` is called. Each
    ``assert`` statement is one test. ``timeout_s``: wall-clock budget of the program and its tests
    (the CPU limit is the same, rounded up). ``memory_mb``: address space of the program's process.
    ``max_procs``: processes/threads it may run (0: no child processes). ``use_bwrap``: None = auto
    (env ``RLFT_SANDBOX``), True = required, False = plain processes.

    >>> run_tests("def f(x):\\n    return 2 * x", ["assert f(2) == 4", "assert f(3) == 5"]).passed
    1
    """
    plan, total, has_check = prepare(tests)         # raises ValueError on test code that does not parse
    if has_check and not entry_point:
        raise ValueError("the tests define check(candidate): pass entry_point= (the function to check)")
    mode = _mode(use_bwrap)
    t0 = time.monotonic()
    info = isolation(mode == "bwrap")
    root = info["root"]
    allow_fork = max_procs > 0 and not (root and info["seccomp"])
    nproc = 0
    if allow_fork and not root:
        nproc = max_procs + 4 if mode == "bwrap" else _user_tasks() + max_procs
    cfg = {"cpu_s": math.ceil(timeout_s) + 1, "memory_mb": int(memory_mb), "file_mb": int(file_mb),
           "nofile": 64, "nproc": nproc, "allow_fork": allow_fork, "landlock": info["landlock"],
           "seccomp": info["seccomp"], "read_paths": _read_paths(), "pidns": mode == "bwrap"}
    secret = secrets.token_hex(16)
    job = {"secret": secret, "program": program, "plan": plan, "total": total, "entry_point": entry_point,
           "timeout_s": float(timeout_s)}
    workdir = None
    try:
        if mode == "bwrap":
            argv, cwd, env = _bwrap_argv(file_mb * 4), "/", _env("/tmp")
        else:
            workdir = tempfile.mkdtemp(prefix="rlft-sandbox-")
            argv, cwd, env = [], workdir, _env(workdir)
        argv += [_python(), "-I", "-S", "-B", "-c", _BOOT]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env=env, close_fds=True, start_new_session=True)
        timed_out = True
        try:
            out, err, timed_out, worker = _talk(proc, _code_frame() + _frame(marshal.dumps(cfg))
                                                + _frame(marshal.dumps(job)), t0 + timeout_s + START_GRACE_S)
        finally:
            _end(proc, mode, 0.0 if timed_out else 1.0)
        if mode == "plain" and worker and not out.startswith(b"RLFT "):
            _kill_group(worker)                     # the supervisor died before cleaning up after the program
        result = _parse(out, secret, total)
        if result is None:
            status = "timeout" if timed_out else "killed"
            why = "time limit (the sandbox did not answer)" if timed_out else \
                f"the sandbox gave no valid result (exit {proc.returncode}): {err.decode(errors='replace')[-300:]}"
            result = (0, total, status, why)
    finally:
        if workdir:
            _rmtree(workdir)
    return TestResult(*result, seconds=time.monotonic() - t0)


def _talk(proc, data: bytes, deadline: float):
    """Write the frames (code, config, job) and read stdout/stderr with caps until EOF or the deadline.

    The job (with the secret) may sit in the pipe before the worker is forked: the supervisor reads
    stdin frame by frame with exact-length reads (nothing read ahead), forks after the config frame,
    and the worker's first act is to replace its fd 0 -- the job is never in the worker's memory."""
    sel = selectors.DefaultSelector()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
    pending, worker, seen_ready = memoryview(data), 0, False
    out, err = bytearray(), bytearray()
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    timed_out = False
    try:
        while any(k.fileobj is not proc.stdin for k in sel.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(left, 1.0)):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        pending = pending[os.write(f.fileno(), pending):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = memoryview(b"")
                    if not pending:
                        sel.unregister(f)
                        f.close()
                    continue
                try:
                    chunk = os.read(f.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(f)
                    continue
                buf = out if f is proc.stdout else err
                if len(buf) < MAX_OUTPUT:
                    buf += chunk
                elif f is proc.stdout:
                    return b"", bytes(err), False, worker           # flooded: no valid result
                if f is proc.stdout and not seen_ready and b"\n" in out:
                    line, _, rest = bytes(out).partition(b"\n")
                    if not line.startswith(b"READY "):
                        return b"", bytes(err), False, worker
                    worker, seen_ready = (int(line[6:]) if line[6:].isdigit() else 0), True
                    out[:] = rest
    finally:
        sel.close()
        if not proc.stdin.closed:
            proc.stdin.close()
    return bytes(out), bytes(err), timed_out, worker


def _parse(out: bytes, secret: str, total: int):
    head = b"RLFT " + secret.encode() + b"\n"
    if not secrets.compare_digest(out[:len(head)], head):
        return None
    try:
        passed, tot, status, detail = marshal.loads(out[len(head):])
    except (EOFError, ValueError, TypeError):
        return None
    if type(passed) is not int or tot != total or not 0 <= passed <= total or status not in STATUSES:
        return None
    return passed, total, status, str(detail)


def _end(proc, mode: str, grace_s: float) -> None:
    """Make sure nothing of the run is left when run_tests returns. Normally the supervisor has exited
    (after killing and reaping the program's process group); with bwrap its PID namespace then ends,
    which kills and reaps everything in it before bwrap exits. Otherwise: SIGKILL, and with bwrap wait
    until the namespace's first process (and so the whole namespace) is gone."""
    try:
        proc.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    inner = []
    if mode == "bwrap":
        try:
            inner = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    _kill_group(proc.pid)
    proc.wait()
    end = time.monotonic() + 5.0
    while inner and time.monotonic() < end:
        inner = [p for p in inner if _alive(p)]
        time.sleep(0.002)


def _alive(pid: int) -> bool:
    """Running (a zombie has finished: a PID namespace's first process turns zombie only after every
    other process of the namespace is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_group(pgid: int) -> None:
    for _ in range(3):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return


def _rmtree(path: str) -> None:
    """Remove a working folder the program may have made hard to remove (chmod 000, symlinks). Never
    follows a link: chmod only on real directories (the program is dead by now: nothing can swap them)."""
    root = os.path.realpath(path)

    def fix(func, p, _exc):
        try:
            for d in (os.path.dirname(p), p):
                if (d == root or d.startswith(root + os.sep)) and os.path.isdir(d) and not os.path.islink(d):
                    os.chmod(d, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=fix)


# ------------------------------------------------------------------------------------------------ batch

def run_batch(jobs, workers: int | None = None, **defaults) -> list[TestResult]:
    """Run many jobs (``Job`` or dicts of ``run_tests`` keywords) in parallel; results in input order.
    ``workers``: concurrent sandboxes (default: the CPUs this process may use). ``defaults`` apply
    to every job that does not set them (``timeout_s=5``, ``use_bwrap=False``...)."""
    names = {f.name for f in fields(Job)}
    kwargs = []
    for j in jobs:
        d = {f: getattr(j, f) for f in names if getattr(j, f) is not None} if isinstance(j, Job) else dict(j)
        kwargs.append({**defaults, **d})
    if not kwargs:
        return []
    workers = workers or len(os.sched_getaffinity(0))
    if workers == 1 or len(kwargs) == 1:
        return [run_tests(**k) for k in kwargs]
    with ThreadPoolExecutor(min(workers, len(kwargs)), thread_name_prefix="rlft-sandbox") as pool:
        return list(pool.map(lambda k: run_tests(**k), kwargs))
