"""Programs that attack the sandbox, each run in both modes (bwrap where it works, and plain).

For every attack: this process keeps running (and receives no signal), the result is right (no
credit for a forgery: forgeries are scored against an expected value drawn at random for the test,
which the program cannot know), nothing outside the sandbox changed (canary files in a folder of the
test and in the home folder, /tmp), no connection reached a socket this test listens on, and no
process of the run is left (none carries the test's marker; this process has no child left).

Placeholders in a program: CANARY_DIR, HOME_CANARY, PORT, PYTEST_PID, MARKER.
"""

import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlft.sandbox import bwrap_available, run_tests, runner

R = secrets.randbelow(10**12) + 10**11          # an answer no program can know


@dataclass
class Attack:
    name: str
    program: str
    tests: list = field(default_factory=lambda: [f"assert f(2) == {R}"])
    max_passed: int = 0
    min_passed: int = 0
    statuses: tuple = ()                        # allowed statuses (empty: any)
    timeout_s: float = 8.0
    memory_mb: int = 256


SQUARE = "def f(x):\n    return x * x\n"
SQUARE_TESTS = ["assert f(2) == 4", "assert f(3) == 9"]
SPAWN = "[sys.executable, '-c', 'import time; time.sleep(60)', 'MARKER']"

ATTACKS = [
    # ------------------------------------------------------------------ resources
    Attack("fork_bomb", "import os\n" + SQUARE + "for _ in range(10000):\n    try:\n        if os.fork() == 0:\n"
           "            while True:\n                os.fork()\n    except OSError:\n        pass\n",
           SQUARE_TESTS, max_passed=2, timeout_s=4),
    Attack("infinite_loop", "def f(x):\n    while True:\n        pass\n", statuses=("timeout",), timeout_s=1.5),
    Attack("memory_bomb", "x = []\nwhile True:\n    x.append(bytearray(10**7))\n", statuses=("memory", "killed")),
    Attack("stdout_flood", "import os, sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    os.write(1, b'y' * 65536)\n",
           statuses=("timeout",), timeout_s=1.5),
    Attack("stderr_flood", "import os\nwhile True:\n    os.write(2, b'RLFT ' * 20000)\n", statuses=("timeout",),
           timeout_s=1.5),
    Attack("recursion_bomb", "import sys\nsys.setrecursionlimit(10**7)\ndef f(x):\n    return f(x + 1) + 1\n",
           timeout_s=2),
    Attack("huge_int_str", "def f(x):\n    return int('9' * 100000) + len(str(10 ** 100000))\n",
           statuses=("runtime_error",)),
    Attack("huge_pow", "def f(x):\n    return 10 ** 10 ** 9\n", statuses=("timeout", "memory", "killed"), timeout_s=1.5),
    Attack("raise_rlimits", "import resource\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC):\n"
           "    try:\n        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
           "    except (ValueError, OSError):\n        pass\nbig = bytearray(2 << 30)\n", statuses=("memory",)),
    Attack("fill_disk", "import os\nfor i in range(6):\n    try:\n        with open(f'junk{i}', 'wb') as fh:\n"
           "            for _ in range(32):\n                fh.write(os.urandom(1 << 20))\n    except OSError:\n"
           "        pass\n" + SQUARE, SQUARE_TESTS, max_passed=2, timeout_s=8),
    # ------------------------------------------------------------------ files and secrets
    Attack("write_outside", "import os\nfor p in ['CANARY_DIR/canary.txt', 'CANARY_DIR/new.txt', '/tmp/MARKER',\n"
           "          'HOME_CANARY', os.path.expanduser('~/MARKER'), '/usr/MARKER']:\n    try:\n"
           "        open(p, 'w').write('pwned')\n    except OSError:\n        pass\n" + SQUARE, SQUARE_TESTS, max_passed=2),
    Attack("delete_files", "import os, shutil\nfor p in ['CANARY_DIR/canary.txt', 'HOME_CANARY']:\n    try:\n"
           "        os.remove(p)\n    except OSError:\n        pass\nshutil.rmtree('CANARY_DIR', ignore_errors=True)\n"
           + SQUARE, SQUARE_TESTS, max_passed=2),
    Attack("symlink_and_chmod_traps", "import os\nfor src, dst in [('CANARY_DIR/canary.txt', 'link'), ('CANARY_DIR', 'dirlink'),\n"
           "                 ('/', 'root')]:\n    try:\n        os.symlink(src, dst)\n    except OSError:\n        pass\n"
           "os.makedirs('d/e', exist_ok=True)\nos.chmod('d/e', 0)\nos.chmod('d', 0)\nos.chmod('.', 0o500)\n" + SQUARE,
           SQUARE_TESTS, max_passed=2),
    Attack("read_env_secret", "import os\ndef f(x):\n    return os.environ.get('RLFT_CANARY_SECRET')\n",
           ["assert f(2) == SECRET"]),
    Attack("read_home_file", "def f(x):\n    return open('HOME_CANARY').read()\n", ["assert f(2) == SECRET"]),
    Attack("read_proc_environ", "import os\ndef f(x):\n    for pid in ['PYTEST_PID', '1'] + os.listdir('/proc'):\n"
           "        try:\n            env = open(f'/proc/{pid}/environ', 'rb').read()\n        except OSError:\n"
           "            continue\n        for kv in env.split(b'\\0'):\n            if kv.startswith(b'RLFT_CANARY_SECRET='):\n"
           "                return kv.split(b'=', 1)[1].decode()\n", ["assert f(2) == SECRET"]),
    Attack("read_parent_memory", "import re\ndef f(x):\n    for pid in ('PYTEST_PID', 'self'):\n        try:\n"
           "            maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
           "            mem = open(f'/proc/{pid}/mem', 'rb')\n        except OSError:\n            continue\n"
           "        for line in maps:\n            lo, hi = (int(v, 16) for v in line.split()[0].split('-'))\n"
           "            if hi - lo > 1 << 26 or 'r' not in line.split()[1]:\n                continue\n            try:\n"
           "                mem.seek(lo)\n                m = re.search(rb'RLFT_CANARY_SECRET=(\\w+)', mem.read(hi - lo))\n"
           "            except (OSError, ValueError, OverflowError):\n                continue\n            if m:\n"
           "                return m.group(1).decode()\n", ["assert f(2) == SECRET"], timeout_s=8),
    Attack("read_via_proc_root", "def f(x):\n    for p in ['/proc/1/root/HOME_CANARY', '/proc/PYTEST_PID/root/HOME_CANARY',\n"
           "              '/proc/PYTEST_PID/cwd/../../../HOME_CANARY']:\n        try:\n            return open(p).read()\n"
           "        except OSError:\n            pass\n", ["assert f(2) == SECRET"]),
    Attack("search_own_memory_for_tests", "import gc\ndef f(x):\n    needle = ''.join(['MARKER-', 'IN-TEST'])\n"
           "    for o in gc.get_objects():\n"
           "        for s in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()):\n"
           "            if isinstance(s, str) and s is not needle and needle in s:\n                return needle\n",
           ["assert f(2) == 'MARKER-IN-TEST'"]),
    # ------------------------------------------------------------------ network
    Attack("connect_socket", "import socket\ndef f(x):\n    for fam, addr in [(socket.AF_INET, ('127.0.0.1', PORT)),\n"
           "                      (socket.AF_INET6, ('::1', PORT))]:\n        try:\n"
           "            s = socket.socket(fam)\n            s.settimeout(2)\n            s.connect(addr)\n"
           "            s.sendall(b'MARKER')\n            return True\n        except OSError:\n            pass\n"
           "    return False\n", ["assert f(2) is True"]),
    Attack("udp_and_unix_sockets", "import socket\ndef f(x):\n    ok = []\n    for args in [(socket.AF_INET, socket.SOCK_DGRAM),\n"
           "                 (socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_PACKET, socket.SOCK_RAW)]:\n        try:\n"
           "            socket.socket(*args).close()\n            ok.append(args[0])\n        except OSError:\n            pass\n"
           "    return ok\n", ["assert f(2) != []"]),
    # ------------------------------------------------------------------ processes and signals
    Attack("kill_parent", "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
           + SQUARE, SQUARE_TESTS, max_passed=2),
    Attack("signal_pytest", "import os, signal\ntry:\n    os.kill(PYTEST_PID, signal.SIGUSR1)\nexcept OSError:\n    pass\n"
           "def f(x):\n    try:\n        os.kill(PYTEST_PID, 0)\n        return 'reached'\n    except OSError:\n"
           "        return 'blocked'\n", ["assert f(2) == 'blocked'"], max_passed=1, min_passed=1),
    Attack("probe_kill_everyone", "import os\ndef f(x):\n    hits = []\n    for call in (lambda: os.kill(-1, 0),\n"
           "                 lambda: os.killpg(0, 0), lambda: os.killpg(os.getpgid(os.getppid()), 0)):\n        try:\n"
           "            call()\n            hits.append(1)\n        except OSError:\n            pass\n    return hits\n",
           ["assert f(2) == []"], max_passed=1, min_passed=1),
    Attack("ctypes_kill", "import ctypes, signal\nlibc = ctypes.CDLL(None)\nlibc.kill(PYTEST_PID, signal.SIGUSR1)\n"
           "libc.kill(-1, 0)\nlibc.syscall(62, PYTEST_PID, 10)\n" + SQUARE, SQUARE_TESTS, max_passed=2),
    Attack("ptrace_and_namespaces", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef f(x):\n"
           "    results = [libc.ptrace(16, PYTEST_PID, 0, 0), libc.ptrace(16, __import__('os').getppid(), 0, 0),\n"
           "               libc.unshare(0x10000000), libc.unshare(0x40000000), libc.setsid()]\n"
           "    return all(r == -1 for r in results)\n", ["assert f(2) is True"], max_passed=1, min_passed=1),
    Attack("ignore_signals_and_spin", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,\n"
           "          signal.SIGXCPU, signal.SIGALRM):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
           statuses=("timeout",), timeout_s=1.5),
    Attack("alarm_handler", "import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n"
           "def f(x):\n    import time\n    time.sleep(3)\n    return x * x\n", SQUARE_TESTS, timeout_s=6),
    Attack("daemon_grandchild", "import os, sys\n" + SQUARE + "try:\n    if os.fork() == 0:\n        try:\n"
           "            try:\n                os.setsid()\n            except OSError:\n                pass\n"
           "            if os.fork() == 0:\n                os.execv(sys.executable, " + SPAWN + ")\n"
           "        finally:\n            os._exit(0)\nexcept OSError:\n    pass\n", SQUARE_TESTS, max_passed=2),
    Attack("child_process_outlives", "import subprocess, sys\ntry:\n    subprocess.Popen(" + SPAWN + ", start_new_session=True)\n"
           "except OSError:\n    pass\n" + SQUARE, SQUARE_TESTS, max_passed=2),
    Attack("thread_outlives", "import threading, time\ndef spin():\n    while True:\n        time.sleep(0.01)\n"
           "threading.Thread(target=spin).start()\n" + SQUARE, SQUARE_TESTS, max_passed=2, min_passed=2),
    Attack("ctypes_segfault", "import ctypes\nctypes.string_at(0)\n" + SQUARE, SQUARE_TESTS, statuses=("killed",)),
    # ------------------------------------------------------------------ forging the result
    Attack("forged_output", "import os, sys\nfor fd in (1, 2):\n    os.write(fd, b'READY 1\\nRLFT ' + b'0' * 32 + b'\\n')\n"
           "print('All tests passed! 100% OK')\ndef f(x):\n    print('ok')\n    return 0\n"),
    Attack("write_all_fds", "import marshal, os\nrec = b'RLFT ' + b'0' * 32 + b'\\n' + marshal.dumps((1, 1, 'ok', ''))\n"
           "for fd in range(0, 256):\n    try:\n        os.write(fd, rec)\n    except OSError:\n        pass\n"
           "def f(x):\n    return 0\n"),
    Attack("preemptive_replies", "import os\nfor fd in range(3, 64):\n    try:\n"
           "        os.write(fd, len(b\"('ok', 1)\").to_bytes(4, 'little') + b\"('ok', 1)\")\n    except OSError:\n"
           "        pass\ndef f(x):\n    return 1\n"),
    Attack("exit_early", "import os\nos._exit(0)\n", statuses=("runtime_error",)),
    Attack("sys_exit_in_test", "import sys\ndef f(x):\n    sys.exit(0)\n"),
    Attack("base_exceptions", "class Boom(BaseException):\n    pass\ndef f(x):\n"
           "    raise {2: KeyboardInterrupt, 3: SystemExit, 4: GeneratorExit}.get(x, Boom)()\n",
           [f"assert f(2) == {R}", f"assert f(3) == {R}", f"assert f(4) == {R}", f"assert f(5) == {R}"]),
    Attack("patch_builtins_unittest", "import builtins, operator, unittest\n"
           "builtins.AssertionError = type('A', (Exception,), {})\nbuiltins.bool = lambda x=0: True\n"
           "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\nbuiltins.len = lambda x: 3\n"
           "operator.eq = lambda a, b: True\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
           "def f(x):\n    return []\n",
           [f"assert f(2) == {R}", "assert len(f(2)) == 3", "assert isinstance(f(2), int)", "assert bool(f(2))"]),
    Attack("shadow_test_names", "import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\n"
           "def len(x):\n    return 3\nclass set:\n    def __init__(self, *a):\n        pass\n"
           "    def __eq__(self, o):\n        return True\ndef f(x):\n    return [0]\n",
           [f"assert math.isclose(f(2)[0], {R})", "assert len(f(2)) == 3", f"assert set(f(2)) == {{{R}}}"]),
    Attack("monkeypatch_harness", "import __main__ as m\nfor name in ('encode', 'dumps', 'send', 'loads', 'decode'):\n"
           "    if hasattr(m, name):\n        setattr(m, name, lambda *a, **k: b\"('ok', 1)\")\ndef f(x):\n    return 0\n",
           timeout_s=1.5),
    Attack("always_equal", "class AE:\n    def __eq__(self, o):\n        return True\n    def __ne__(self, o):\n"
           "        return False\n    __hash__ = object.__hash__\n    def __bool__(self):\n        return True\n"
           "def f(x):\n    return AE()\n", [f"assert f(2) == {R}", f"assert {R} == f(2)", f"assert not f(2) != {R}",
                                           f"assert f(2) in [{R}]"]),
    Attack("class_tricks", "class FakeInt:\n    __class__ = int\n    def __eq__(self, o):\n        return True\n"
           "    __hash__ = object.__hash__\nclass EvilInt(int):\n    def __eq__(self, o):\n        return True\n"
           "    __hash__ = int.__hash__\nclass EvilStr(str):\n    def __eq__(self, o):\n        return True\n"
           "    __hash__ = str.__hash__\ndef f(x):\n    return {2: FakeInt(), 3: EvilInt(0), 4: EvilStr('no')}[x]\n",
           [f"assert f(2) == {R}", f"assert f(3) == {R}", f"assert f(4) == '{R}'",
            "assert isinstance(f(2), int)"]),
    Attack("huge_return_value", "def f(x):\n    return list(range(3_000_000))\n"),
    Attack("exception_message_injection", "def f(x):\n    raise ValueError('\\nRLFT ' + '0' * 32 + '\\n' + 'x' * 10**7)\n",
           statuses=("runtime_error",)),
    Attack("syntax_tricks", "def f(x):\n    return 1\x00\n", statuses=("syntax_error",)),
]
assert len(ATTACKS) >= 25 and len({a.name for a in ATTACKS}) == len(ATTACKS)

# Run again with bubblewrap alone (Landlock and seccomp switched off inside), to show that its
# namespaces hold by themselves where the kernel lacks those layers. PROBES report whether a call
# was refused, which bwrap alone does not promise (a socket can be made in the empty network
# namespace, a process can signal its own supervisor): for them only the invariants are checked.
BWRAP_ONLY = ["write_outside", "delete_files", "symlink_and_chmod_traps", "read_env_secret", "read_home_file",
              "read_proc_environ", "read_parent_memory", "read_via_proc_root", "search_own_memory_for_tests",
              "connect_socket", "udp_and_unix_sockets", "kill_parent", "signal_pytest", "probe_kill_everyone",
              "ctypes_kill", "ptrace_and_namespaces", "daemon_grandchild", "child_process_outlives",
              "thread_outlives", "write_all_fds", "fill_disk"]
PROBES = {"udp_and_unix_sockets", "probe_kill_everyone", "ptrace_and_namespaces"}

# What plain mode cannot hold on a kernel without Landlock / a CPU without the seccomp filter: it says
# so in isolation() and in its start-up warning, and these attacks are skipped there.
PLAIN_NEEDS_LANDLOCK = {"write_outside", "delete_files", "read_home_file", "read_proc_environ", "read_via_proc_root",
                        "read_parent_memory"}
PLAIN_NEEDS_SECCOMP = {"fork_bomb", "connect_socket", "udp_and_unix_sockets", "kill_parent", "signal_pytest",
                       "probe_kill_everyone", "ctypes_kill", "ptrace_and_namespaces", "daemon_grandchild",
                       "child_process_outlives"}


@pytest.fixture(params=[True, False], ids=["bwrap", "plain"])
def use_bwrap(request):
    if request.param and not bwrap_available()[0]:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_available()[1]}")
    return request.param


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Canaries outside the sandbox, a listening socket, a SIGUSR1 trap; checked after the attack."""
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    (canary_dir / "canary.txt").write_text("intact")
    secret = secrets.token_hex(16)
    home_canary = Path.home() / f".rlft-canary-{secrets.token_hex(6)}"
    home_canary.write_text(secret)
    monkeypatch.setenv("RLFT_CANARY_SECRET", secret)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    got, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                got.append(conn.recv(100))
                conn.close()
            except OSError:
                pass
    listener = threading.Thread(target=accept, daemon=True)
    listener.start()
    signals = []
    old = signal.signal(signal.SIGUSR1, lambda *a: signals.append(a[0]))
    created = []
    real_mkdtemp = runner.tempfile.mkdtemp

    def mkdtemp(*a, **k):
        created.append(real_mkdtemp(*a, **k))
        return created[-1]
    monkeypatch.setattr(runner.tempfile, "mkdtemp", mkdtemp)
    w = {"CANARY_DIR": str(canary_dir), "HOME_CANARY": str(home_canary), "PORT": str(server.getsockname()[1]),
         "PYTEST_PID": str(os.getpid()), "MARKER": f"rlft-attack-{secrets.token_hex(6)}", "secret": secret,
         "canary_dir": canary_dir, "home_canary": home_canary, "got": got, "signals": signals, "created": created}
    yield w
    stop.set()
    listener.join(2)
    server.close()
    signal.signal(signal.SIGUSR1, old)
    home_canary.unlink(missing_ok=True)


def _processes_with(marker: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(pid))
            except OSError:
                pass
    return out


def _children() -> list[int]:
    me, out = os.getpid(), []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(pid))
    return out


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(attack, use_bwrap, world):
    _attack(attack, use_bwrap, world)


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.name in BWRAP_ONLY], ids=BWRAP_ONLY)
def test_attack_bwrap_alone(attack, world, monkeypatch):
    if not bwrap_available()[0]:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_available()[1]}")
    monkeypatch.setitem(runner._cache, "landlock", 0)
    monkeypatch.setattr(runner._confine, "seccomp_supported", lambda: False)
    info = runner.isolation(True)
    assert not info["landlock"] and not info["seccomp"]
    _attack(attack, True, world, counts=attack.name not in PROBES)


def _attack(attack, use_bwrap, world, counts=True):
    info = runner.isolation(use_bwrap)
    if not use_bwrap and not info["landlock"] and attack.name in PLAIN_NEEDS_LANDLOCK:
        pytest.skip("plain mode without Landlock does not isolate files and /proc (see isolation())")
    if not use_bwrap and not info["seccomp"] and attack.name in PLAIN_NEEDS_SECCOMP:
        pytest.skip("plain mode without seccomp does not isolate network and processes (see isolation())")
    program = attack.program
    for key in ("CANARY_DIR", "HOME_CANARY", "PORT", "PYTEST_PID", "MARKER"):
        program = program.replace(key, world[key])
    tests = [t.replace("SECRET", repr(world["secret"])) for t in attack.tests]
    t0 = time.monotonic()
    r = run_tests(program, tests, timeout_s=attack.timeout_s, memory_mb=attack.memory_mb, use_bwrap=use_bwrap)
    elapsed = time.monotonic() - t0

    # the result is right
    if counts:
        assert attack.min_passed <= r.passed <= attack.max_passed, r
        if attack.statuses:
            assert r.status in attack.statuses, r
    assert elapsed < attack.timeout_s + runner.START_GRACE_S + 5, r
    # nothing outside changed
    assert sorted(p.name for p in world["canary_dir"].iterdir()) == ["canary.txt"]
    assert (world["canary_dir"] / "canary.txt").read_text() == "intact"
    assert world["home_canary"].read_text() == world["secret"]
    assert not Path("/tmp", world["MARKER"]).exists() and not (Path.home() / world["MARKER"]).exists()
    assert not Path("/usr", world["MARKER"]).exists()
    assert all(not os.path.exists(d) for d in world["created"]), "working folder left behind"
    # no connection, no signal
    time.sleep(0.05)
    assert world["got"] == [] and world["signals"] == []
    # no process left behind
    assert _processes_with(world["MARKER"]) == []
    assert _children() == []


def test_runs_after_attacks_still_work(use_bwrap):
    """The machinery is unharmed: a plain correct program still passes."""
    assert run_tests(SQUARE, SQUARE_TESTS, use_bwrap=use_bwrap).passed == 2
