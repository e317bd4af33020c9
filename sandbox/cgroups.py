"""Limits that bound an execution as a whole: a memory, a pids and a cpu cgroup (v1) per side of each worker.

Every process an execution starts stays in its side's cgroups (each child of the fork server joins them
first, through a `cgroup.procs` descriptor the host opened), so the memory limit counts all of them
together, forks and memory files included, the pids limit counts their processes and threads, and the
cpu cgroup makes them one entity for the scheduler: however many busy processes an execution starts
(`setsid()` changes no cgroup), a concurrent execution keeps its share of the CPU. Executions of a worker
run one after another and end with all their processes killed, so the cgroups of a side hold one
execution at a time; their resettable counters (peak memory, limit hits) are reset before each
(`reset`). Needs root and the v1 memory and pids hierarchies (this project's CI machine has cgroup v1
only); elsewhere `available()` is False and the limits are per process (rlimits). The cpu controller is
used where it is mounted and writable (`cpu_available()`).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import time

logger = logging.getLogger(__name__)

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids")  # needed; "cpu" is used besides where there is one (`cpu_available`)
PREFIX = "advcode-sandbox-"


def _own(controller: str) -> str | None:
    """The folder of this process's cgroup in the v1 hierarchy of `controller`, if there is one."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                if controller in names.split(","):
                    folder = os.path.join(ROOT, controller, path.lstrip("/"))
                    return folder if os.path.isfile(os.path.join(folder, "cgroup.procs")) else None
    except (OSError, ValueError):
        pass
    return None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this process can make the cgroups (asked once: neither answer changes while it runs)."""
    if os.geteuid() != 0:
        return False
    folders = [_own(c) for c in CONTROLLERS]
    return all(folders) and all(os.access(f, os.W_OK) for f in folders)


@functools.lru_cache(maxsize=None)
def cpu_available() -> bool:
    """Whether the v1 cpu hierarchy is there for this process's cgroups too (asked once)."""
    folder = _own("cpu")
    return available() and folder is not None and os.access(folder, os.W_OK)


class Cgroups:
    """The memory, pids and (`cpu_available()`) cpu cgroups of one side of one worker: `folders` in that
    order."""

    def __init__(self, name: str, memory_mb: int, max_processes: int):
        self.folders = []
        for controller in CONTROLLERS + (("cpu",) if cpu_available() else ()):
            parent = os.path.join(_own(controller), f"{PREFIX}{os.getpid()}")
            _remove_stale(os.path.dirname(parent))
            folder = os.path.join(parent, name)
            os.makedirs(folder, exist_ok=True)
            self.folders.append(folder)
        memory, pids = self.folders[:2]
        _write(memory, "memory.limit_in_bytes", memory_mb << 20)
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):  # no escape into swap
            _write(memory, "memory.memsw.limit_in_bytes", memory_mb << 20)
        _write(pids, "pids.max", max_processes)
        # opened here, by root: the kernel checks the opener's credentials when a process writes itself in
        self.fds = [os.open(os.path.join(f, "cgroup.procs"), os.O_WRONLY) for f in self.folders]
        self.counters = [os.open(os.path.join(memory, n), os.O_WRONLY) for n in sorted(os.listdir(memory))
                         if n.endswith(("max_usage_in_bytes", "failcnt"))]

    def reset(self):
        """Zero the counters an execution could otherwise learn an earlier one's use from (peak memory, times
        the limit was hit: every `memory.*max_usage_in_bytes` and `memory.*failcnt`); ~5 µs. Counters the
        kernel cannot reset (`pids.events`, `cpu.stat`, `memory.stat`'s totals) stay: no execution at a
        namespaced level can read any cgroup file (no /sys in its view, no capability to mount one)."""
        for fd in self.counters:
            os.pwrite(fd, b"0", 0)

    def empty(self, wait_s: float = 1.0) -> bool:
        """Kill whatever is left in the cgroups; True once they are empty."""
        deadline = time.monotonic() + wait_s
        while True:
            try:  # every process joins both cgroups, so the pids cgroup lists them all
                with open(os.path.join(self.folders[1], "cgroup.procs")) as f:
                    left = [int(line) for line in f if line.strip()]
            except OSError:
                left = []
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def close(self):
        """Kill what is left and remove the cgroups; the shared parent folder goes with its last child (one
        attempt each: another worker's cgroups keep it, and a crash's leftovers go at the next start)."""
        for fd in self.fds + self.counters:
            os.close(fd)
        self.fds, self.counters = [], []
        emptied = self.empty(wait_s=0.5)
        for folder in self.folders:
            if _rmdir(folder, attempts=20 if emptied else 1):
                _rmdir(os.path.dirname(folder), attempts=1)


def _write(folder: str, name: str, value: int):
    with open(os.path.join(folder, name), "w") as f:
        f.write(str(value))


def _rmdir(folder: str, attempts: int = 1) -> bool:
    """Remove a cgroup folder; True once it is gone. Up to `attempts` tries, 5 ms apart (the kernel may need
    a moment after the last process has gone); a folder with child cgroups is never waited for."""
    for attempt in range(attempts):
        try:
            os.rmdir(folder)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno == errno.ENOTEMPTY or attempt == attempts - 1:
                logger.debug("could not remove cgroup %s: %s", folder, e)
                return False
            time.sleep(0.005)
    return False


_swept: set[str] = set()  # folders `_remove_stale` has cleaned in this process


def _remove_stale(folder: str):
    """Remove the cgroups of sandboxes whose process is gone (a crash leaves them behind); once per folder
    and process (a crash before this process started is all it can find)."""
    if folder in _swept:
        return
    _swept.add(folder)
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(PREFIX) or not entry[len(PREFIX):].isdigit():
            continue
        pid = int(entry[len(PREFIX):])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(folder, entry)
        for child in os.listdir(path) if os.path.isdir(path) else []:
            if os.path.isdir(os.path.join(path, child)):
                _rmdir(os.path.join(path, child), attempts=1)
        _rmdir(path, attempts=1)
