"""Kernel confinement applied from inside the sandbox: capabilities, Landlock, seccomp, dumpability.

This file runs inside the sandbox, so it uses the standard library only (``_ctypes``). The supervisor calls
``nondumpable`` and ``drop_capabilities`` on itself; the worker that runs the untrusted program calls
``confine`` on itself after its rlimits are set and before the program's first line runs. Everything
here can only take rights away, and the kernel keeps them away for every descendant.

* Landlock (Linux >= 5.13, no privilege needed): the worker may read the interpreter and system
  libraries, read and write its working folder, and nothing else. From ABI 4 no TCP bind/connect,
  from ABI 6 no signals to, and no abstract unix sockets of, processes outside the worker's domain.
  Landlock also stops ptrace and /proc/<pid>/mem|fd access to processes outside the domain.
* seccomp (x86_64, aarch64): denies, with an errno, the system calls a test program has no business
  making and that reach other processes or the kernel's rarer surfaces: signals to anyone but itself,
  ptrace and process_vm_*, new sessions/process groups (so a process cannot leave the group that is
  killed at the end), sockets (socketpair stays), namespaces, mounts, io_uring, bpf, keyrings,
  rlimits/scheduling of other processes; optionally every new process (threads stay allowed).
"""

from __future__ import annotations

import os
import struct
import sys

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

# libc calls through ``_ctypes.call_function``: importing the ``ctypes`` package costs the sandbox
# 5-13 ms per program, its C core 0.5 ms. Ints pass as C ints, bytes as pointers to their data, None as
# NULL -- all these calls need. (Fallback: the ctypes package, same conventions.)
try:
    import _ctypes
    _call_function = _ctypes.call_function
except (ImportError, AttributeError):
    _call_function = None
_syms: dict = {}
_BYTES_DATA = sys.getsizeof(b"") - 1          # offset of a bytes object's data (CPython)


def _call(name: str, *args) -> int:
    if _call_function is None:
        import ctypes
        return getattr(ctypes.CDLL(None), name)(*args)
    if name not in _syms:
        if "libc" not in _syms:
            _syms["libc"] = _ctypes.dlopen(None, 2)        # RTLD_NOW: the process's own symbols
        _syms[name] = _ctypes.dlsym(_syms["libc"], name)
    return _call_function(_syms[name], args)


def _prctl(option: int, arg: int = 0, check: bool = True) -> int:
    r = _call("prctl", option, arg, 0, 0, 0)
    if r < 0 and check:
        raise OSError(f"prctl({option}, {arg}) failed")
    return r


def nondumpable() -> None:
    """Make /proc/<pid>/{mem,fd,environ} and ptrace of this process unavailable to same-uid processes
    without CAP_SYS_PTRACE (the worker has no capabilities)."""
    _prctl(PR_SET_DUMPABLE, 0)


def subreaper() -> None:
    """Orphans of our descendants are re-parented to us, so we can reap them."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1, check=False)


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets and set
    no_new_privs (uid 0 without capabilities can no longer bypass file permissions, rlimits or
    ptrace checks, and exec cannot give anything back)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, check=False)
    for cap in range(64):                     # past the last capability the call fails: harmless
        _prctl(PR_CAPBSET_DROP, cap, check=False)
    header = struct.pack("Ii", 0x20080522, 0)    # _LINUX_CAPABILITY_VERSION_3, this process
    if _call("capset", header, bytes(24)) != 0:  # effective, permitted, inheritable = 0, twice
        raise OSError("capset failed")


# ---------------------------------------------------------------------------------------------- Landlock

LL_FS_FILE = 1 | 2 | 4            # EXECUTE, WRITE_FILE, READ_FILE
LL_FS_READ = 1 | 4 | 8            # EXECUTE, READ_FILE, READ_DIR


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none)."""
    try:
        return max(0, _call("syscall", 444, None, 0, 1))      # LANDLOCK_CREATE_RULESET_VERSION
    except (OSError, AttributeError):
        return 0


def _ll_rights(abi: int) -> tuple[int, int]:
    """(all filesystem rights the ABI knows, the extra file rights it knows)."""
    fs, extra_file = (1 << 13) - 1, 0
    if abi >= 2:
        fs |= 1 << 13                       # REFER
    if abi >= 3:
        fs |= 1 << 14                       # TRUNCATE
        extra_file |= 1 << 14
    if abi >= 5:
        fs |= 1 << 15                       # IOCTL_DEV
        extra_file |= 1 << 15
    return fs, extra_file


def landlock(read_paths: list[str], write_paths: list[str], abi: int) -> None:
    """Restrict this process (and its future children) to reading ``read_paths`` and reading/writing
    ``write_paths``; no TCP (ABI >= 4), no signals or abstract sockets outside (ABI >= 6)."""
    fs_all, extra_file = _ll_rights(abi)
    attr = struct.pack("QQQ", fs_all, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    rfd = _call("syscall", 444, attr[:size], size, 0)
    if rfd < 0:
        raise OSError("landlock_create_ruleset failed")
    try:
        for paths, dir_rights in ((read_paths, LL_FS_READ), (write_paths, fs_all)):
            for p in paths:
                try:
                    fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue                # a path this system does not have
                try:
                    rights = dir_rights if os.path.isdir(p) else dir_rights & (LL_FS_FILE | extra_file)
                    rule = struct.pack("=Qi", rights, fd)            # landlock_path_beneath_attr, packed
                    if _call("syscall", 445, rfd, 1, rule, 0) != 0:
                        raise OSError(f"landlock_add_rule({p}) failed")
                finally:
                    os.close(fd)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if _call("syscall", 446, rfd, 0) != 0:
            raise OSError("landlock_restrict_self failed")
    finally:
        os.close(rfd)


# ----------------------------------------------------------------------------------------------- seccomp

# System call numbers: x86_64 (asm/unistd_64.h) and the generic table aarch64 uses (asm-generic/unistd.h).
_ARCH = {
    "x86_64": (0xC000003E, dict(  # noqa: C408 -- a table of names
        kill=62, tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424,
        pidfd_open=434, pidfd_getfd=438, ptrace=101, process_vm_readv=310, process_vm_writev=311, kcmp=312,
        setsid=112, setpgid=109, socket=41, unshare=272, setns=308, clone=56, clone3=435, fork=57, vfork=58,
        mount=165, umount2=166, pivot_root=155, chroot=161, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, bpf=321, userfaultfd=323, perf_event_open=298, keyctl=250, add_key=248,
        request_key=249, setpriority=141, sched_setparam=142, sched_setscheduler=144, sched_setattr=314,
        sched_setaffinity=203, ioprio_set=251, migrate_pages=256, move_pages=279, prlimit64=302,
        process_madvise=440, process_mrelease=448, open_by_handle_at=304, name_to_handle_at=303,
        open_tree=428, move_mount=429, fsopen=430, fsmount=432, fspick=433, mount_setattr=442)),
    "aarch64": (0xC00000B7, dict(  # noqa: C408
        kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_send_signal=424,
        pidfd_open=434, pidfd_getfd=438, ptrace=117, process_vm_readv=270, process_vm_writev=271, kcmp=272,
        setsid=157, setpgid=154, socket=198, unshare=97, setns=268, clone=220, clone3=435,
        mount=40, umount2=39, pivot_root=41, chroot=51, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, bpf=280, userfaultfd=282, perf_event_open=241, keyctl=219, add_key=217,
        request_key=218, setpriority=140, sched_setparam=118, sched_setscheduler=119, sched_setattr=274,
        sched_setaffinity=122, ioprio_set=30, migrate_pages=238, move_pages=239, prlimit64=261,
        process_madvise=440, process_mrelease=448, open_by_handle_at=265, name_to_handle_at=264,
        open_tree=428, move_mount=429, fsopen=430, fsmount=432, fspick=433, mount_setattr=442)),
}
_DENY = ("tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "pidfd_open", "pidfd_getfd",
         "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "setsid", "setpgid", "socket", "unshare",
         "setns", "mount", "umount2", "pivot_root", "chroot", "io_uring_setup", "io_uring_enter",
         "io_uring_register", "bpf", "userfaultfd", "perf_event_open", "keyctl", "add_key", "request_key",
         "setpriority", "sched_setparam", "sched_setscheduler", "sched_setattr", "ioprio_set",
         "migrate_pages", "move_pages", "process_madvise", "process_mrelease", "open_by_handle_at",
         "name_to_handle_at", "open_tree", "move_mount", "fsopen", "fsmount", "fspick", "mount_setattr")
CLONE_THREAD = 0x00010000
CLONE_NS = 0x7E020000            # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

EPERM, EAGAIN, ENOSYS = 1, 11, 38
RET_ALLOW, RET_KILL = 0x7FFF0000, 0x80000000
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06


def seccomp_supported() -> bool:
    return os.uname().machine in _ARCH


def _errno(e: int) -> int:
    return 0x00050000 | e


def seccomp(self_pid: int, allow_fork: bool) -> None:
    """Install the filter described in the module docstring. ``self_pid``: the only process this one
    may signal (itself). ``allow_fork``: whether new processes may be created (threads always may)."""
    arch, nr = _ARCH[os.uname().machine]
    ld_nr, ld_arg0 = (LD_ABS, 0, 0, 0), (LD_ABS, 0, 0, 16)       # seccomp_data.nr, low word of args[0]
    prog = [(LD_ABS, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, RET_KILL), ld_nr]
    if arch == 0xC000003E:                                      # x32 system calls
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, _errno(ENOSYS))]

    def rule(name: str, body: list) -> None:
        """if nr == name: <body> (which ends in a return); the accumulator holds nr again after."""
        if name in nr:
            prog.extend([(JEQ, 0, len(body), nr[name]), *body])
    for name in _DENY:
        rule(name, [(RET, 0, 0, _errno(EPERM))])
    rule("clone3", [(RET, 0, 0, _errno(ENOSYS))])             # its flags live in memory: libc falls back to clone
    for name in ("kill", "tgkill"):                           # only to itself
        rule(name, [ld_arg0, (JEQ, 0, 1, self_pid), (RET, 0, 0, RET_ALLOW), (RET, 0, 0, _errno(EPERM))])
    for name in ("prlimit64", "sched_setaffinity"):           # only on itself (pid 0)
        rule(name, [ld_arg0, (JEQ, 0, 1, 0), (RET, 0, 0, RET_ALLOW), (RET, 0, 0, _errno(EPERM))])
    clone_body = [ld_arg0, (JSET, 0, 1, CLONE_NS), (RET, 0, 0, _errno(EPERM))]
    if not allow_fork:
        clone_body += [(JSET, 0, 1, CLONE_THREAD), (RET, 0, 0, RET_ALLOW), (RET, 0, 0, _errno(EAGAIN))]
        rule("fork", [(RET, 0, 0, _errno(EAGAIN))])
        rule("vfork", [(RET, 0, 0, _errno(EAGAIN))])
    else:
        clone_body += [(RET, 0, 0, RET_ALLOW)]
    rule("clone", clone_body)
    prog.append((RET, 0, 0, RET_ALLOW))

    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)       # struct sock_filter[]
    fprog = struct.pack("HP", len(prog), id(code) + _BYTES_DATA)     # struct sock_fprog
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _call("prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        raise OSError("seccomp filter refused")
    del code                                  # alive until the kernel has copied it
