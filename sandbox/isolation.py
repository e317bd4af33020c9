"""How a sandbox worker is started: the strongest isolation this machine allows.

Levels, strongest first (the chosen one is `Sandbox.isolation`, and is logged):

- ``bwrap``: bubblewrap with new user, pid, network, ipc and uts namespaces; a minimal read-only root
  (system libraries and the Python installation only: no home directories, no project files); a private,
  size-capped tmpfs as the only writable place; a scrubbed environment; dies with its parent. Started as
  root, we first drop to a uid of the worker's own (setpriv, no capabilities), so process limits hold and
  two workers cannot signal each other; paths under a root-only directory (pyenv under /root) are staged
  through a private mount namespace so the unprivileged uid can bind them.
- ``unshare``: root without bubblewrap: new mount, pid and network namespaces (util-linux `unshare`),
  a uid of the worker's own, private tmpfs over /tmp, /var/tmp and /dev/shm. The rest of the file system is
  readable and writable wherever that uid's permissions allow (world-writable directories).
- ``process``: neither: resource limits, a new session and a private directory only. No network or file
  system isolation, and a `setsid()` grandchild can outlive its execution. A warning is logged.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import site
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
SANDBOX_WORKER = "/sandbox/worker.py"
BASE_UID = 61000  # workers run as BASE_UID + index when started by root
LEVELS = ("bwrap", "unshare", "process")

ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def available_levels() -> list[str]:
    """The levels whose tools this machine has, strongest first (whether the kernel lets them start is
    only known by starting a worker: `Sandbox` does, and falls back under "auto")."""
    root = os.geteuid() == 0
    have = {
        "bwrap": shutil.which("bwrap") is not None and (not root or _have("setpriv", "unshare", "mount")),
        "unshare": root and _have("setpriv", "unshare", "mount"),
        "process": True,
    }
    return [level for level in LEVELS if have[level]]


def detect_level(requested: str = "auto") -> str:
    """The isolation level to use: `requested`, or the strongest available for "auto"."""
    if requested == "auto":
        return available_levels()[0]
    if requested not in LEVELS:
        raise ValueError(f"isolation must be 'auto' or one of {LEVELS}, got {requested!r}")
    if requested not in available_levels():
        raise RuntimeError(f"isolation {requested!r} is not available on this machine (see README 'Sandbox')")
    return requested


def _have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def python_paths() -> list[str]:
    """Directories the sandboxed interpreter needs: its installation(s) and site-packages."""
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in site.getsitepackages() if os.path.isdir(p))
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and os.path.isdir(user_site):
        paths.add(user_site)
    # keep only the outermost of nested paths; system directories are bound whole anyway
    system = ("/usr", "/lib", "/lib64", "/bin")
    kept = sorted(p for p in paths if not any(p == s or p.startswith(s + "/") for s in system))
    return [p for p in kept if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in kept)]


def worker_command(level: str, index: int, tmp_mb: int) -> tuple[list[str], dict[str, str] | None]:
    """argv and environment that start worker `index` at `level`."""
    python = sys.executable
    if level == "process":
        env = dict(ENV, SANDBOX_WORK_ROOT=_process_work_root(index))
        return [python, "-I", str(WORKER)], env

    uid = str(BASE_UID + index)
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--"]
    if level == "unshare":
        inner = drop + [python, "-I", str(WORKER)]
        private = [("/tmp", f"size={tmp_mb}m,mode=1777"), ("/var/tmp", "size=1m"), ("/dev/shm", "size=1m")]
        script = _private_mounts_script(python_paths() + [str(WORKER.parent)], private) + "exec " + shlex.join(inner)
        argv = ["unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork",
                "--kill-child", "--mount-proc", "--", "sh", "-c", script]
        return argv, dict(ENV, SANDBOX_OWN_PIDNS="1")

    # bwrap
    root = os.geteuid() == 0
    binds = [(p, p) for p in python_paths()] + [(str(WORKER), SANDBOX_WORKER)]
    stage = []
    if root:
        # stage every bind source under a private tmpfs: the dropped uid cannot traverse /root (mode 700)
        stage.append("mount -t tmpfs -o size=1m,mode=755 sbx /mnt")
        staged = []
        for i, (src, dst) in enumerate(binds):
            target = f"/mnt/{i}"
            make = "mkdir -p" if os.path.isdir(src) else "touch"
            stage.append(f"{make} {target} && mount --bind {shlex.quote(src)} {target}")
            staged.append((target, dst))
        binds = staged
    bwrap = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--ro-bind", "/usr", "/usr", "--ro-bind-try", "/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64",
        "--ro-bind-try", "/bin", "/bin", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/alternatives", "/etc/alternatives", "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        "--proc", "/proc", "--dev", "/dev", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp",
    ]
    for src, dst in binds:
        bwrap += ["--ro-bind", src, dst]
    for key, value in dict(ENV, SANDBOX_OWN_PIDNS="1").items():
        bwrap += ["--setenv", key, value]
    # the root bwrap builds is a writable tmpfs of unbounded size: make it read-only; /tmp stays writable
    bwrap += ["--remount-ro", "/", "--chdir", "/tmp", "--", python, "-I", SANDBOX_WORKER]
    if not root:
        return bwrap, None
    script = " && ".join(stage) + " && exec " + shlex.join(drop + bwrap)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script], None


def _private_mounts_script(paths: list[str], private: list[tuple[str, str]]) -> str:
    """Shell steps (run as root in a private mount namespace) that mount empty tmpfs over the `private`
    directories and over every closed ancestor of `paths` (e.g. /root, mode 700, which an unprivileged uid
    cannot traverse), while keeping `paths` themselves reachable at their own locations: they are staged
    under /mnt first and bound back afterwards (a virtualenv under /tmp survives the private /tmp)."""
    closed = sorted({a for p in paths for a in _ancestors(p) if not os.stat(a).st_mode & 0o001})
    closed = [a for a in closed if not any(a.startswith(b + "/") for b in closed)]  # outermost only
    steps = ["mount -t tmpfs -o size=1m,mode=755 sbx /mnt"]
    steps += [f"mkdir -p /mnt/{i} && mount --bind {shlex.quote(p)} /mnt/{i}" for i, p in enumerate(paths)]
    steps += [f"mount -t tmpfs -o {opts} sbx {shlex.quote(d)}" for d, opts in private]
    steps += [f"mount -t tmpfs -o size=1m,mode=755 sbx {shlex.quote(a)}" for a in closed]
    steps += [f"mkdir -p {shlex.quote(p)} && mount --bind /mnt/{i} {shlex.quote(p)}" for i, p in enumerate(paths)]
    return " && ".join(steps) + " && "


def _ancestors(path: str) -> list[str]:
    parts = Path(path).resolve().parts
    return [str(Path(*parts[:i])) for i in range(2, len(parts))]


def _process_work_root(index: int) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix=f"sandbox-worker{index}-")
    os.chmod(path, 0o700)
    return path


def describe(level: str) -> str:
    """One line for logs and the README: what this level isolates."""
    return {
        "bwrap": "bubblewrap: own user/pid/net namespaces, read-only minimal root, private tmpfs, own uid",
        "unshare": "unshare: own pid/net/mount namespaces, own uid, private /tmp; rest of the fs visible",
        "process": "process only: rlimits and a new session; NO network or file-system isolation",
    }[level]
