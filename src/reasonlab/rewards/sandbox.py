"""Running untrusted, model-written Python with limits: :func:`run_python`.

Each run is a fresh ``python -I`` (isolated mode: no user site, no PYTHON* variables) in a fresh
temporary directory that is its working directory and is deleted afterwards, with a minimal
environment, in its own session and process group. Before the untrusted code runs, a short preamble
in that same interpreter does, in this order:

1. **rlimits**: ``RLIMIT_CPU`` (CPU seconds; SIGXCPU, reported as ``timeout``), ``RLIMIT_AS``
   (address space, so ``bytearray(10**10)`` raises MemoryError), ``RLIMIT_FSIZE`` (largest file it
   may write; this also caps captured stdout/stderr), ``RLIMIT_NPROC`` (processes + threads) and
   ``RLIMIT_CORE = 0``;
2. **no network**: ``unshare(CLONE_NEWNET)`` puts it in a new, empty network namespace where even
   127.0.0.1 is unreachable (as root; as an ordinary user, ``CLONE_NEWUSER | CLONE_NEWNET`` where
   the kernel allows unprivileged user namespaces). If the kernel refuses, the run goes on, guarded
   by step 4 only;
3. **privileges**: ``PR_SET_NO_NEW_PRIVS`` (no exec of a setuid binary can regain privileges);
   and, as root, a switch to a one-off unprivileged uid/gid with no supplementary groups. Root
   ignores ``RLIMIT_NPROC`` and may write anywhere; the one-off uid makes ``RLIMIT_NPROC`` count this
   run's processes only, and lets the parent kill *every* process of the run afterwards
   (``kill -9 -1`` as that uid), including ones that left the process group. If the interpreter
   lives where other users cannot read it (``/root/.pyenv``), the run keeps only
   ``CAP_DAC_READ_SEARCH`` so that it can still import modules: it may then *read* any file, but
   writing, signals and limits are those of the unprivileged uid;
4. **a Python audit hook** (``sys.addaudithook``, defense in depth) that raises ``PermissionError``
   on: opening a file for writing, and creating, removing, renaming or changing files, outside the
   temporary directory; any socket; fork, exec, ``os.system``, ``subprocess``, ``posix_spawn`` (and
   ``_posixsubprocess.fork_exec``, which has no audit event, is replaced); ctypes; killing other
   processes; raising rlimits; ``gc`` object walks (which could reach the hook's state).

Why the preamble and not ``preexec_fn``: ``preexec_fn`` runs Python between fork and exec, which the
``subprocess`` docs call unsafe when the parent has threads (``CodeVerifier.score_many`` runs
sandboxes from a thread pool). The preamble does the same steps in the fresh, single-threaded child
before any untrusted code is compiled or run. A failure there is reported as status ``error``.

The parent waits at most ``timeout`` seconds of wall time, then SIGKILLs the whole process group
(and, as root, every process of the run's uid) -- also when the program ended normally, so that
background children it left do not outlive it.

What this does NOT protect against (it is not a security boundary for hostile code):
- The audit hook is a Python-level guard. It reads its state from closures that the program cannot
  reach and does not call monkeypatchable code, but code that finds a way around it (a CPython bug,
  a C extension in the environment that does raw syscalls, an ``os.PathLike`` whose ``__fspath__``
  answers differently on each call) is stopped only by the OS layers: the unprivileged uid (as
  root), the network namespace, the rlimits and the kill of the whole run.
- Reading is not restricted: the program can read every file its uid may read (as a non-root user,
  everything that user can read; with ``CAP_DAC_READ_SEARCH`` kept, every file).
- As root, the unprivileged uid can still write to world-writable places (``/tmp``, ``/dev/shm``)
  if it gets past the audit hook; as a non-root user, it can write wherever that user can.
- Without root or user namespaces there is no network namespace, and ``RLIMIT_NPROC`` counts all of
  the user's processes; the run's processes are killed by process group only.
- CPU and memory limits are per process; a run that gets past the fork guard may use up to
  ``max_processes`` times as much.
For hostile workloads use a container or VM (gVisor, Firecracker) around this.

Cost: about 40-60 ms per run on top of Python's own start-up (tests/test_sandbox.py measures it).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = ["SandboxLimits", "SandboxResult", "run_python"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 10.0
    """Wall-clock seconds before the whole run is killed (status timeout)."""
    cpu_seconds: int = 10
    """CPU seconds (RLIMIT_CPU); exceeding them also gives status timeout."""
    memory_mb: int = 1024
    """Address-space limit in MiB (RLIMIT_AS)."""
    max_processes: int = 32
    """Processes and threads of the run's uid (RLIMIT_NPROC)."""
    max_file_mb: int = 16
    """Largest file the run may write, stdout and stderr included (RLIMIT_FSIZE)."""
    network: bool = False
    """Allow network access (skips the network namespace and the socket guard)."""
    python_guard: bool = True
    """Install the audit-hook guard; turn off only to test the OS-level layers on their own."""
    max_output_chars: int = 10_000
    """Characters of stdout (its start) and stderr (its end, where the traceback is) kept."""

    def __post_init__(self) -> None:
        for name in ("timeout", "cpu_seconds", "memory_mb", "max_processes", "max_file_mb", "max_output_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SandboxResult:
    """``status``: ``ok`` (exit code 0), ``failed`` (non-zero exit or killed by a signal),
    ``timeout`` (wall clock or CPU limit) or ``error`` (the sandbox itself could not run it)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# The exit code and stderr marker of a preamble that failed before the program ran.
_SETUP_FAILED = 125
_SETUP_MARKER = "reasonlab-sandbox: setup failed:"

# Runs in the child, before the program: limits, network namespace, uid, guard, then the program.
# Everything is inside functions and deleted from the module namespace, which becomes the
# program's __main__ namespace.
_PREAMBLE = r'''
import sys, os
def _reasonlab_setup(cfg):
    import resource
    def lim(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))
    lim(resource.RLIMIT_CORE, 0)
    lim(resource.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1)
    lim(resource.RLIMIT_FSIZE, cfg["fsize"])
    lim(resource.RLIMIT_NPROC, cfg["nproc"])
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def check(ret, what):
        if ret != 0:
            raise OSError(ctypes.get_errno(), what + " failed: " + os.strerror(ctypes.get_errno()))
    # No exec of a setuid binary (su, sudo) can ever give privileges back.
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if not cfg["network"]:
        CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
        if os.getuid() == 0:
            libc.unshare(CLONE_NEWNET)
        elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            # Map our own ids into the new user namespace, or we could not even create files.
            uid, gid = cfg["orig_uid"], cfg["orig_gid"]
            for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                               ("/proc/self/gid_map", f"{gid} {gid} 1")):
                with open(path, "w") as f:
                    f.write(text)
    if cfg["uid"] is not None:
        if cfg["keep_read_caps"]:
            check(libc.prctl(8, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        if cfg["keep_read_caps"]:
            # Python lives where only root may read (e.g. /root/.pyenv): keep CAP_DAC_READ_SEARCH,
            # reading and directory search only, so that later imports work. Writing stays denied.
            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
            data = (Data * 2)()
            data[0].effective = data[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH
            check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
    lim(resource.RLIMIT_AS, cfg["memory"])  # last: the steps above need a little memory
def _reasonlab_guard(root, allow_network):
    import builtins, posix, _posixsubprocess
    # Every name the hook uses is a local captured here: the program may monkeypatch builtins and
    # modules, but cannot change what these closures hold.
    isinstance, str, bytes, int, PermissionError = (builtins.isinstance, builtins.str, builtins.bytes,
                                                     builtins.int, builtins.PermissionError)
    getcwd, readlink, getpid, fspath = posix.getcwd, posix.readlink, posix.getpid, posix.fspath
    WRITE = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_APPEND | posix.O_TRUNC
    PROCESS = frozenset({"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                         "subprocess.Popen", "os.link", "os.symlink", "resource.setrlimit", "resource.prlimit",
                         "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames"})
    # event -> (position of a path argument, position of its dir_fd argument or None); such paths
    # must lie inside root. A dir_fd of -1 or None means "relative to the working directory".
    PATHS = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
             "os.chown": ((0, 3),), "os.rename": ((0, 2), (1, 3)), "os.truncate": ((0, None),),
             "os.utime": ((0, 3),), "shutil.rmtree": ((0, 1),), "os.chflags": ((0, None),),
             "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "sqlite3.connect": ((0, None),)}
    def normalize(path, dir_fd):
        # Pure string work on captured builtins: no monkeypatchable function runs inside the hook.
        # Sound because symlinks and hard links cannot be created (see PROCESS), so no path under
        # root leads outside it.
        if not isinstance(path, (str, bytes)):
            path = fspath(path)  # pathlib.Path and other os.PathLike objects
        # Unbound C methods give an exact str even for a subclass that overrides its methods.
        path = bytes.decode(path, "utf-8", "surrogateescape") if isinstance(path, bytes) else str.__str__(path)
        if not path.startswith("/"):
            base = readlink("/proc/self/fd/%d" % dir_fd) if isinstance(dir_fd, int) and dir_fd >= 0 else getcwd()
            path = base + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)
    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already open descriptor
        p = normalize(path, dir_fd)
        return p == root or p.startswith(root + "/") or p == "/dev/null"
    def hook(event, args):
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = flags & WRITE if isinstance(flags, int) else isinstance(mode, str) and mode.strip("rbt") != ""
            if writing and not inside(path, None):
                raise PermissionError("sandbox: writing outside the working directory is not allowed: %r" % (path,))
        elif event in PATHS:
            for i, fd_index in PATHS[event]:
                if event == "sqlite3.connect" and args[i] in (":memory:", b":memory:", ""):
                    continue
                if not inside(args[i], None if fd_index is None else args[fd_index]):
                    raise PermissionError("sandbox: %s outside the working directory is not allowed" % event)
        elif event in PROCESS or event.startswith("ctypes."):
            raise PermissionError("sandbox: %s is not allowed" % event)
        elif event.startswith("socket.") and not allow_network:
            raise PermissionError("sandbox: network access is not allowed (%s)" % event)
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, getpid()):
            raise PermissionError("sandbox: signalling other processes is not allowed")
        elif event == "import" and args[0] == "_posixsubprocess":
            raise PermissionError("sandbox: re-importing _posixsubprocess is not allowed")
    def fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: starting processes is not allowed")
    _posixsubprocess.fork_exec = fork_exec  # raises no audit event of its own
    sys.addaudithook(hook)
def _reasonlab_main():
    # Settings come as key=value arguments (no json import: it costs start-up time on every run).
    cfg = {}
    for arg in sys.argv[1:]:
        key, value = arg.split("=", 1)
        cfg[key] = None if value == "None" else int(value) if value.lstrip("-").isdigit() else value
    try:
        with open("main.py", encoding="utf-8") as f:
            source = f.read()
        _reasonlab_setup(cfg)
    except BaseException as e:
        sys.stderr.write("%s %s: %s\n" % (cfg["marker"], type(e).__name__, e))
        sys.stderr.flush()
        os._exit(cfg["setup_failed"])
    if cfg["guard"]:
        _reasonlab_guard(cfg["root"], cfg["network"])
    sys.argv[:] = ["main.py"]
    return compile(source, "main.py", "exec")
_reasonlab_code = _reasonlab_main()
del _reasonlab_setup, _reasonlab_guard, _reasonlab_main, sys, os
__file__ = "main.py"
exec(globals().pop("_reasonlab_code"))
'''

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _mapped_uid_range() -> tuple[int, int]:
    """The range of uids this (possibly user-namespaced) root may switch to."""
    try:
        with open("/proc/self/uid_map") as f:
            inside, _, count = (int(x) for x in f.readline().split())
        return inside, inside + count - 1
    except (OSError, ValueError):
        return 0, 65534


@functools.lru_cache(maxsize=1)
def _python_readable_by_others() -> bool:
    """Whether an unprivileged uid can read this interpreter's standard library and site-packages
    (every directory on the way searchable by "others")."""
    paths = {os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    for path in paths:
        path = os.path.realpath(path)
        while True:
            try:
                if not os.stat(path).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return True


def _acquire_uid() -> int:
    """A one-off uid for one run (as root): RLIMIT_NPROC and the final kill then cover only that run."""
    low, high = _mapped_uid_range()
    low, high = max(low, 1_000_000), min(high, 1_999_999)
    with _uid_lock:
        if low > high:  # a narrow user-namespace mapping: share "nobody"
            return 65534
        while True:
            uid = random.randint(low, high)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: ``kill -9 -1`` run as that uid reaches exactly those.

    The kernel walks the process list under a lock, so a fork bomb cannot outrun it.
    """
    kill = shutil.which("kill") or "/bin/kill"
    cmd = [kill, "-9", "-1"] if os.path.exists(kill) else [sys.executable, "-S", "-c", "import os; os.kill(-1, 9)"]
    # user=/group= switch ids in the child without running Python there (unlike preexec_fn).
    subprocess.run(cmd, user=uid, group=uid, extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _wait_no_reap(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits, leaving it a zombie so its pid and process-group id stay reserved
    for the killpg that follows. True if it exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _read(f, limit_chars: int, tail: bool) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    limit_bytes = 4 * limit_chars
    f.seek(max(0, size - limit_bytes) if tail else 0)
    text = f.read(limit_bytes).decode("utf-8", errors="replace")
    if len(text) > limit_chars or size > limit_bytes:
        cut = max(0, len(text) - limit_chars)
        return "[... output truncated ...]\n" + text[cut:] if tail else text[:limit_chars] + "\n[... output truncated ...]"
    return text


def _rmtree(path: str) -> None:
    def make_writable_and_retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), stdin: str | None = None) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox described in the module docstring."""
    start = time.monotonic()
    root_user = os.geteuid() == 0
    uid = _acquire_uid() if root_user else None
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="reasonlab_sandbox_"))
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        cfg = {
            "cpu": max(1, int(limits.cpu_seconds)),
            "memory": limits.memory_mb * 1024 * 1024,
            "nproc": limits.max_processes,
            "fsize": limits.max_file_mb * 1024 * 1024,
            "network": int(limits.network),
            "guard": int(limits.python_guard),
            "uid": uid,
            "keep_read_caps": int(uid is not None and not _python_readable_by_others()),
            "orig_uid": os.getuid(),
            "orig_gid": os.getgid(),
            "root": workdir,
            "marker": _SETUP_MARKER,
            "setup_failed": _SETUP_FAILED,
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
            if stdin is not None:
                inp.write(stdin.encode("utf-8"))
                inp.seek(0)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _PREAMBLE, *(f"{k}={v}" for k, v in cfg.items())],
                    cwd=workdir,
                    env=env,
                    stdin=inp if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own session and process group, led by proc.pid
                    close_fds=True,
                )
            except OSError as e:
                return SandboxResult("error", None, "", f"could not start Python: {e}", time.monotonic() - start)
            finished = _wait_no_reap(proc.pid, limits.timeout)
            # Kill what is left -- everything on timeout, background children otherwise.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if uid is not None:
                _kill_uid(uid)
            returncode = proc.wait()
            duration = time.monotonic() - start
            stdout = _read(out, limits.max_output_chars, tail=False)
            stderr = _read(err, limits.max_output_chars, tail=True)
    finally:
        _rmtree(workdir)
        if uid is not None:
            _release_uid(uid)

    if not finished:
        status = "timeout"
        stderr += f"\n[sandbox: killed after {limits.timeout:g}s wall-clock timeout]"
    elif returncode == 0:
        status = "ok"
    elif returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and duration >= limits.cpu_seconds):
        status = "timeout"
        stderr += f"\n[sandbox: CPU time limit of {limits.cpu_seconds}s exceeded]"
    elif returncode == _SETUP_FAILED and _SETUP_MARKER in stderr:
        status = "error"
    else:
        status = "failed"
        if returncode < 0:
            stderr += f"\n[sandbox: killed by signal {-returncode}]"
    return SandboxResult(status, returncode, stdout, stderr, duration)
