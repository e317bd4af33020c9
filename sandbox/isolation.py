"""Where the sandbox's processes run: one container per side (the candidate's code, the tests) of each worker,
at the strongest isolation level this machine allows. `Sandbox.isolation` names the level in force and
`describe(level, cgroups)` says what it isolates; the sandbox logs it when it starts.

- ``bwrap``: bubblewrap. ``unshare``: the same container built with util-linux's `unshare`, `mount` and
  `pivot_root` where bubblewrap is missing. Both give each container its own user, pid, network, IPC and
  UTS namespaces and one file-system view, read-only: the system's libraries and programs (/usr, /lib, /bin,
  with every site-packages and dist-packages folder in them hidden), this interpreter and its standard
  library at /sandbox/python (so the project or interpreter may live anywhere, under /tmp too), the side's
  allow-listed packages at /sandbox/site (the candidate: NumPy; the tests: pytest and what it needs), and
  the sandbox's own code at /sandbox/code. Nothing else: no home folders, no project files, no datasets, no
  package data of other installed packages, no host environment variables (the environment is a fixed,
  minimal set, for the container's first process too). Started as root, each container first drops to a
  uid of its own with no capabilities (setpriv): process limits then hold per container and no two
  containers can signal each other. Inside, `zygote.py` gives every execution fresh namespaces (network
  included), a fresh tmpfs, the limits and a seccomp filter, and drops the capabilities the container
  granted it for that.
- ``process``: neither tool: resource limits, a new session, the seccomp filter and a private folder per
  execution only. No network, file-system or process isolation; refused as root unless
  `SandboxConfig.allow_unisolated` (the `--allow-unisolated` option of training, evaluation and inference).
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import shlex
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from sandbox.cgroups import cpu_available

logger = logging.getLogger(__name__)

LEVELS = ("bwrap", "unshare", "process")
SIDES = ("candidate", "tests")
PACKAGES = {"candidate": ("numpy",), "tests": ("pytest",)}  # importable besides the standard library
# standard-library modules the candidate's fork server imports once, so executions need not (typing alone
# costs a few milliseconds per execution otherwise); none of them reads anything of a request
PRELOAD = ("typing", "math", "collections", "itertools", "functools", "re", "heapq", "bisect", "string")
BASE_UID = 61000  # as root: side s of worker i runs as BASE_UID + 2 i + s
CODE_DIR = Path(__file__).resolve().parent
PYTHON = "/sandbox/python"  # this interpreter inside a container (PYTHONHOME)
PYTHON_EXEC = "/sandbox/python-exec"  # its platform-specific library, where that lives elsewhere
SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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


def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + TOOLS_PATH)


def available_levels() -> list[str]:
    """The levels whose tools this machine has, strongest first (whether the kernel lets them start is
    only known by starting a worker: `Sandbox` does, and falls back under "auto")."""
    root = os.geteuid() == 0
    have = {
        "bwrap": bool(_tool("bwrap")) and (not root or all(map(_tool, ("setpriv", "unshare", "mount")))),
        "unshare": all(map(_tool, ("unshare", "setpriv", "mount", "umount", "pivot_root"))),
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
        raise RuntimeError(f"isolation {requested!r} is not available on this machine (see docs/sandbox.md)")
    return requested


def describe(level: str, cgroups: bool = False) -> str:
    """One line for logs and docs/sandbox.md: what this level isolates, and how the limits hold."""
    cpu = "; a CPU share of its own (cpu cgroup)" if cgroups and cpu_available() else (
        "; no CPU share of its own (no cpu cgroup: a busy execution slows the others)" if cgroups else "")
    limits = (f"memory and process count bound each execution as a whole (cgroup v1){cpu}" if cgroups else
              "memory limited per process and process count per uid only (no cgroup available)")
    containers = ("own user/pid/net/IPC namespaces per container, fresh pid/mount/IPC/network (loopback only) "
                  "namespaces and tmpfs per execution, read-only minimal root with allow-listed packages, no "
                  "capabilities, no_new_privs, seccomp (no kernel keyring, no user namespaces)")
    return {
        "bwrap": f"bubblewrap: {containers}; {limits}",
        "unshare": f"unshare: {containers}; {limits}",
        "process": (f"process only: rlimits, a new session and seccomp (no kernel keyring, no user namespaces); "
                    f"NO network, file-system or process isolation; {limits}"),
    }[level]


# ---------------------------------------------------------------- the file-system view
@dataclass(frozen=True)
class Mount:
    kind: str  # "ro": bind `src` read-only at `dst`; "tmpfs": an empty read-only tmpfs; "symlink": `dst` -> `src`
    dst: str
    src: str = ""


@functools.lru_cache(maxsize=None)
def view(side: str) -> tuple[Mount, ...]:
    """Everything a container of `side` sees, besides /proc, /dev and /tmp."""
    mounts = []
    for path in SYSTEM:
        if os.path.islink(path):
            mounts.append(Mount("symlink", path, os.readlink(path)))
        elif os.path.isdir(path):
            mounts.append(Mount("ro", path, path))
    mounts += [Mount("ro", path, path) for path in SYSTEM_FILES if os.path.exists(path)]
    mounts += [Mount("tmpfs", path) for path in _system_site_dirs()]
    mounts += _python_mounts()
    mounts += [Mount("ro", f"/sandbox/site/{name}", path) for name, path in sorted(package_items(PACKAGES[side]).items())]
    mounts.append(Mount("ro", "/sandbox/code", str(CODE_DIR)))
    return tuple(mounts)


def _system_site_dirs() -> list[str]:
    """site-packages and dist-packages folders inside the system folders a container binds."""
    found = set(glob.glob("/usr/lib*/python3*/*-packages") + glob.glob("/usr/local/lib*/python3*/*-packages"))
    found.update(site.getsitepackages())
    real = {os.path.realpath(p) for p in found if os.path.isdir(p)}
    return sorted(p for p in real if any(p.startswith(s + "/") for s in SYSTEM if not os.path.islink(s)))


def _python_mounts() -> list[Mount]:
    """This interpreter, its shared library and its standard library, at /sandbox/python (PYTHONHOME),
    with the site-packages folder inside the standard library hidden."""
    stdlib, platstdlib = _stdlib_dirs()
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR") or "/nonexistent")
    version = os.path.basename(stdlib)  # "python3.11"
    mounts = [Mount("ro", f"{PYTHON}/bin/python3", os.path.realpath(sys.executable))]
    if os.path.dirname(stdlib) == libdir:  # pyenv, conda, python.org builds: the library sits beside it
        mounts.append(Mount("ro", f"{PYTHON}/lib", libdir))
    else:  # distribution builds: the library is in a system folder already
        mounts.append(Mount("ro", f"{PYTHON}/lib/{version}", stdlib))
    if platstdlib != stdlib:
        mounts.append(Mount("ro", f"{PYTHON_EXEC}/lib/{os.path.basename(platstdlib)}", platstdlib))
    return mounts + [Mount("tmpfs", f"{PYTHON}/lib/{version}/{sub}") for sub in ("site-packages", "dist-packages")
                     if os.path.isdir(os.path.join(stdlib, sub))]


def _stdlib_dirs() -> tuple[str, str]:
    """The standard library and its platform-specific part (lib-dynload) of the base interpreter: in a
    virtual environment sysconfig's own "platstdlib" is the environment's folder, which has no lib-dynload."""
    base = {"base": sys.base_prefix, "installed_base": sys.base_prefix,
            "platbase": sys.base_exec_prefix, "installed_platbase": sys.base_exec_prefix}
    return tuple(os.path.realpath(sysconfig.get_path(name, vars=base)) for name in ("stdlib", "platstdlib"))


def package_items(names) -> dict[str, str]:
    """Top-level files and folders (`numpy`, `numpy.libs`, `_pytest`, `py.py`, ...) of the installed
    distributions `names` and the distributions they require, by name -> absolute path."""
    from importlib import metadata

    todo, seen, items = list(names), set(), {}
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith((".dist-info", ".egg-info", ".pth", ".data")):
                continue
            path = os.path.realpath(dist.locate_file(top))
            if os.path.exists(path):
                items[top] = path
        todo += [req for req in map(_required, dist.requires or []) if req]
    return items


def _required(requirement: str) -> str | None:
    """The distribution name of a requirement that applies here (markers evaluated), else None."""
    from packaging.requirements import Requirement  # a dependency of pytest, the tests' side's package

    try:
        req = Requirement(requirement)
        return req.name if req.marker is None or req.marker.evaluate({"extra": ""}) else None
    except Exception:
        return None


# ---------------------------------------------------------------- commands
def container_command(level: str, side: str, index: int, control_fd: int, tmp_mb: int = 64,
                      work_root: str = "") -> tuple[list[str], dict[str, str]]:
    """argv and environment that start the fork server of `side` for worker `index` at `level`."""
    env = dict(ENV, SANDBOX_ROLE=side, SANDBOX_CONTROL_FD=str(control_fd), SANDBOX_TMP_MB=str(tmp_mb))
    if side == "candidate":
        env["SANDBOX_PRELOAD"] = ",".join(PRELOAD)
    if level == "process":
        env["SANDBOX_WORK_ROOT"] = work_root
        return [sys.executable, "-E", "-s", "-B", str(CODE_DIR / "zygote.py")], env

    stdlib, platstdlib = _stdlib_dirs()
    env.update(PYTHONHOME=PYTHON if platstdlib == stdlib else f"{PYTHON}:{PYTHON_EXEC}",
               LD_LIBRARY_PATH=f"{PYTHON}/lib", SANDBOX_NAMESPACED="1", SANDBOX_SITE="/sandbox/site")
    zygote = [f"{PYTHON}/bin/python3", "-S", "-B", "/sandbox/code/zygote.py"]
    mounts = view(side)
    root = os.geteuid() == 0
    uid = BASE_UID + 2 * index + SIDES.index(side) if root else os.getuid()
    gid = uid if root else os.getgid()
    point = _stage_point([m.src for m in mounts if m.kind == "ro"])
    stage, sources = _stage(mounts, point) if root else ("", [m.src for m in mounts])
    setpriv = [_tool("setpriv") or "setpriv"]
    if root:  # a uid of its own, no capabilities left in the initial namespace
        setpriv += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
    setpriv += ["--pdeathsig", "KILL", "--"]
    if level == "bwrap":  # bubblewrap dies with its parent by itself (--die-with-parent)
        inner = (setpriv if root else []) + _bwrap_args(mounts, sources, env) + zygote
    else:
        script = _unshare_script(mounts, sources, f"{point}/root" if root else point, env, zygote)
        inner = setpriv + [_tool("unshare") or "unshare", "--user", f"--map-user={uid}", f"--map-group={gid}",
                           "--keep-caps", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
                           "--", "/bin/sh", "-c", script]
    launch = {"PATH": TOOLS_PATH, "LANG": "C.UTF-8"}  # all the host environment the tools see
    if not root:
        return inner, launch
    # as root: bind every source under a private tmpfs first (the dropped uid cannot traverse /root, mode 700)
    return [_tool("unshare") or "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            stage + "exec " + shlex.join(inner)], launch


def _stage_point(sources: list[str]) -> str:
    """An existing folder, outside every source, to mount private tmpfs on."""
    for point in ("/mnt", "/media", "/srv", "/opt", "/boot"):
        if os.path.isdir(point) and not any(s == point or s.startswith(point + "/") for s in sources):
            return point
    raise RuntimeError("no folder to build the sandbox's file-system view in (/mnt, /media, /srv, /opt)")


def _stage(mounts, point: str) -> tuple[str, list[str]]:
    steps = [f"mount -t tmpfs -o size=1m,mode=755 sandbox-stage {point}", f"mkdir {point}/root"]
    sources = []
    for i, m in enumerate(mounts):
        if m.kind != "ro":
            sources.append(m.src)
            continue
        target = f"{point}/{i}"
        steps.append(f"{'mkdir' if os.path.isdir(m.src) else 'touch'} {target} && mount --bind {shlex.quote(m.src)} {target}")
        sources.append(target)
    return " && ".join(steps) + " && ", sources


def _bwrap_args(mounts, sources, env) -> list[str]:
    args = [_tool("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP",  # for zygote.py; its children drop them
            "--cap-add", "CAP_NET_ADMIN"]  # (each child brings its own network namespace's loopback up)
    for m, src in zip(mounts, sources):
        if m.kind == "ro":
            args += ["--ro-bind", src, m.dst]
        elif m.kind == "symlink":
            args += ["--symlink", m.src, m.dst]
        else:
            args += ["--size", "4096", "--tmpfs", m.dst, "--remount-ro", m.dst]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", "4096", "--tmpfs", "/dev/shm", "--remount-ro", "/dev/shm",
             "--remount-ro", "/dev", "--size", "4096", "--tmpfs", "/tmp", "--remount-ro", "/tmp"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args + ["--remount-ro", "/", "--chdir", "/", "--"]


def _unshare_script(mounts, sources, root: str, env, command) -> str:
    """Shell steps, run as root of a new user namespace, that build the same view as `_bwrap_args`."""
    q = shlex.quote
    r = q(root)
    steps = ["set -e", f"export PATH={TOOLS_PATH}", f"mount -t tmpfs -o size=1m,mode=755 sandbox-root {r}"]
    for m, src in zip(mounts, sources):
        dst = q(root + m.dst)
        if m.kind == "ro":
            steps.append(f"mkdir -p {dst}" if os.path.isdir(m.src)
                         else f"mkdir -p {q(os.path.dirname(root + m.dst))} && touch {dst}")
            steps += [f"mount --bind {q(src)} {dst}", f"mount -o remount,bind,ro,nosuid {dst}"]
        elif m.kind == "symlink":
            steps.append(f"ln -s {q(m.src)} {dst}")
        else:
            steps.append(f"mount -t tmpfs -o ro,size=4k,mode=755 sandbox-hidden {dst}")
    steps += [f"mkdir -p {r}/dev {r}/proc {r}/tmp", f"mount -t tmpfs -o size=64k,mode=755,nosuid sandbox-dev {r}/dev"]
    for name in DEVICES:
        steps += [f"touch {r}/dev/{name}", f"mount --bind /dev/{name} {r}/dev/{name}"]
    steps += [f"ln -s /proc/self/fd {r}/dev/fd"] + [f"ln -s /proc/self/fd/{i} {r}/dev/{n}"
                                                    for i, n in enumerate(("stdin", "stdout", "stderr"))]
    steps += [f"mkdir {r}/dev/shm", f"mount -t tmpfs -o ro,size=4k sandbox-shm {r}/dev/shm",
              f"mount -o remount,ro {r}/dev", f"mount -t proc -o nosuid,nodev,noexec proc {r}/proc",
              f"mount -t tmpfs -o ro,size=4k sandbox-tmp {r}/tmp",
              f"cd {r}", "mkdir .old", "pivot_root . .old", "umount -n -l /.old", "rmdir /.old",
              "mount -n -o remount,ro /", "cd /"]  # -n: no /run/mount/utab here
    steps.append("exec env -i " + " ".join(f"{k}={q(v)}" for k, v in env.items()) + " " + shlex.join(command))
    return "\n".join(steps)
