"""Fork server inside the isolation: one per side (the candidate's code, the tests) of each sandbox worker.

Started by `sandbox.executor` inside the container `sandbox/isolation.py` builds, with the side's code
(`candidate.py` or `runner.py`) imported and nothing else. It never sees a request. It keeps one spare child
forked and isolated ahead of time; on its control socket it receives only limits and file descriptors
("run"), hands them to the spare, which becomes the execution, and kills it when told ("kill"; it answers
at once and reaps the child later, while the kernel tears its namespaces down). Code, tests, outcomes and
output travel on sockets and memory files that only the child and the host hold, so no process that has
seen an earlier request is the parent of a new execution.

Each child, before any untrusted byte arrives (where the level has namespaces):
- is pid 1 of a new pid namespace (killing it ends every process the execution started, setsid() ones too),
  with a fresh /proc;
- has a new mount namespace with a fresh, size-capped tmpfs on /tmp (its working folder) and /dev/shm,
  a new IPC namespace (no SysV shared memory or semaphores survive it) and a new network namespace with
  loopback only (no socket, port or connection state survives it);
- drops every capability; the bounding and ambient sets are empty, no_new_privs is set and a seccomp filter
  (every level: no kernel keyring, no new user namespace) is in force: the fork server did those once
  (`harden`), and a child inherits them and cannot undo them;
- once its execution comes: joins the memory and pids cgroups the host passed with "run" (where it has
  them), so the limits bound everything the execution starts; sets rlimits (address space, CPU time, file
  size, core dumps; process count without cgroups); keeps only its sockets (host, peer) and its
  stdout/stderr memory files.
"""
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import resource
import signal
import socket
import struct
import sys
import traceback

import wire

ROLE = os.environ.get("SANDBOX_ROLE", "")  # "candidate" or "tests"
MODULE = {"candidate": "candidate", "tests": "runner"}.get(ROLE, "")  # what the role runs
NAMESPACED = os.environ.get("SANDBOX_NAMESPACED") == "1"
CONTROL_FD = int(os.environ.get("SANDBOX_CONTROL_FD", "3"))
WORK_ROOT = os.environ.get("SANDBOX_WORK_ROOT", "")  # process level: where each execution's folder goes
TMP_MB = int(os.environ.get("SANDBOX_TMP_MB", "64"))  # size of each execution's tmpfs
HOST_FD, PEER_FD = 3, 4  # the child's sockets, after it has closed everything else

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x20000000, 0x40000000, 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# (audit architecture, system call numbers) of the machines the seccomp filter knows
SYSCALLS = {
    "x86_64": (0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "clone3": 435, "unshare": 272, "clone": 56}),
    "aarch64": (0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "clone3": 435, "unshare": 97, "clone": 220}),
}
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 4, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

libc = ctypes.CDLL(None, use_errno=True)


try:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        LAST_CAP = int(f.read())
except OSError:
    LAST_CAP = 63


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


# ---------------------------------------------------------------- the child: isolation, then the side's code
def harden():
    """What every child inherits and nothing here needs, done once in the fork server before its first fork:
    an empty bounding set and ambient set (where the level has namespaces; they matter only at an exec, which
    the fork server never does), no_new_privs and the seccomp filter (both are inherited across fork and can
    never be undone by a child)."""
    if NAMESPACED:
        for cap in range(LAST_CAP + 1):
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop from the bounding set")
        _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_install_seccomp(), "seccomp")


def prepare():
    """What needs privileges (in our own user namespace) and no request: done before one arrives."""
    os.setsid()
    if NAMESPACED:
        # the container's mounts are private (bubblewrap's; `unshare --propagation private`): ours stay ours
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET), "unshare")
        _loopback_up()
        tmp = f"size={TMP_MB}m,mode=700"
        _mount("sandbox-tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp)
        _mount("sandbox-shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp)
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:  # the kernel refuses a new proc here: show none rather than the container's
            libc.umount2(b"/proc", MNT_DETACH)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        _check(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")  # no capability left in any set


def _loopback_up():
    """The new network namespace's only interface, loopback, up (as the container's was)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16s24x", b"lo")), 16)[0]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _install_seccomp() -> int:
    """A seccomp filter for this process and all it starts: no kernel keyring (add_key, request_key, keyctl:
    EPERM) and no new user namespace (unshare or clone with CLONE_NEWUSER: EPERM; clone3, whose flags a
    filter cannot read: ENOSYS, so the C library falls back to clone); system calls of another ABI (32-bit
    or x32) are refused. 0 on success; raises on a machine whose system call numbers it does not know."""
    machine = os.uname().machine
    if machine not in SYSCALLS:
        raise OSError(f"no seccomp filter for {machine}")
    arch, nr = SYSCALLS[machine]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW, _ERRNO | errno
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    program = [  # (code, jump if true, jump if false, k); jumps are to labels, resolved below
        (ld, 0, 0, 4), (jeq, 0, "nosys", arch), (ld, 0, 0, 0), (jge, "nosys", 0, 0x40000000),
        (jeq, "perm", 0, nr["add_key"]), (jeq, "perm", 0, nr["request_key"]), (jeq, "perm", 0, nr["keyctl"]),
        (jeq, "nosys", 0, nr["clone3"]), (jeq, "flags", 0, nr["unshare"]), (jeq, "flags", 0, nr["clone"]),
        (ret, 0, 0, allow),
        "flags", (ld, 0, 0, 16), (jset, "perm", 0, CLONE_NEWUSER), (ret, 0, 0, allow),  # args[0], low half
        "perm", (ret, 0, 0, eperm),
        "nosys", (ret, 0, 0, enosys),
    ]
    labels, code = {}, []
    for step in program:
        if isinstance(step, str):
            labels[step] = len(code)
        else:
            code.append(step)
    to = lambda target, at: target if isinstance(target, int) else labels[target] - at - 1  # noqa: E731
    raw = b"".join(struct.pack("HBBI", c, to(t, i), to(f, i), k) for i, (c, t, f, k) in enumerate(code))
    buffer = ctypes.create_string_buffer(raw)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Program(len(code), ctypes.addressof(buffer))
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


def confine(limits, cgroup_fds):
    """The execution's limits. Joining a cgroup needs no capability: the host opened the file as root."""
    for fd in cgroup_fds:
        os.write(fd, b"0")  # "0": this process; its children follow it
    _limit(resource.RLIMIT_AS, _vm_size() + (limits["memory_mb"] << 20))
    _limit(resource.RLIMIT_CPU, int(limits["timeout_s"]) + 1)
    _limit(resource.RLIMIT_FSIZE, limits["max_file_mb"] << 20)
    _limit(resource.RLIMIT_CORE, 1)  # no core dump; 0 is ignored when core_pattern pipes to a program, 1 is not
    if not cgroup_fds:  # without a pids cgroup: per uid (a uid of its own when the host is root)
        _limit(resource.RLIMIT_NPROC, limits["max_processes"])


def spare_main(sock, workdir):
    """The forked child: isolates itself, waits for its execution ("run"), then runs the side's code.
    Never returns."""
    try:
        prepare()
        problem = None
    except BaseException:
        problem = traceback.format_exc()
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 8)
    except OSError:
        os._exit(0)
    if not msg:  # the fork server has gone
        os._exit(0)
    limits = json.loads(msg)
    host, peer, out, err, *cgroup_fds = fds
    # The fork server's socket says whether set-up failed: nothing the execution runs can write to it (it is
    # closed or overwritten below), unlike the stderr the execution shares with the code it runs.
    report = sock.detach()
    try:
        if problem:
            raise RuntimeError(problem)
        os.chdir(workdir)
        confine(limits, cgroup_fds)
        devnull = os.open(os.devnull, os.O_RDONLY)
        # move out of the way first: a received descriptor may already sit on one of the target numbers
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in (devnull, out, err, host, peer)]
        for src, dst in zip(high, (0, 1, 2, HOST_FD, PEER_FD)):
            os.dup2(src, dst)
        os.closerange(PEER_FD + 1, 1 << 16)  # the report socket too: the last step that can fail
    except BaseException:
        try:
            why = traceback.format_exc()
            for fd, text in ((report, why.strip().splitlines()[-1][-4000:] or "?"),
                             (err, f"sandbox: the execution's isolation could not be set up:\n{why}")):
                with contextlib.suppress(OSError):
                    os.write(fd, text.encode())
        finally:
            os._exit(1)
    try:
        role = sys.modules[MODULE]
        sys.path[:] = [workdir] + [p for p in sys.path if p and not p.startswith(CODE_DIR)]
        role.main(socket.socket(fileno=HOST_FD), socket.socket(fileno=PEER_FD), limits)
    except BaseException:
        traceback.print_exc()
    wire.flush_output()
    os._exit(0)


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- the fork server
CODE_DIR = os.path.dirname(os.path.abspath(__file__))


class Server:
    """Forks a spare child as soon as the last one is taken, so that the fork and the isolation of an
    execution happen before its request arrives, while the host is busy with other things."""

    def __init__(self, control):
        self.control = control
        self.spare = None  # (pid, socket, folder) of the child that waits for the next execution
        self.child = None  # the running execution's child
        self.child_report = None  # its socket: a message on it says that its set-up failed
        self.dying = {}  # pid -> its folder (process level): killed or running, not yet reaped
        self.error = None  # why the last "run" started nothing
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY) if NAMESPACED else -1

    def fork_spare(self):
        workdir = "/tmp"
        if NAMESPACED:
            _check(libc.unshare(CLONE_NEWPID), "unshare pid")  # the next child is pid 1 of a new namespace
        else:
            import tempfile  # process level only: keeps the namespaced fork servers small
            workdir = tempfile.mkdtemp(dir=WORK_ROOT or None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            self._own_pidns()
            raise
        if pid == 0:
            self.control.close()
            ours.close()
            if self.child_report is not None:  # the running execution's: not this child's business
                self.child_report.close()
            spare_main(theirs, workdir)
        self._own_pidns()
        theirs.close()
        self.spare = (pid, ours, workdir)
        self.dying[pid] = workdir

    def _own_pidns(self):
        if NAMESPACED:  # later children of ours: back in our own pid namespace
            _check(libc.setns(self.own_pidns, CLONE_NEWPID), "setns pid")

    def run(self, limits, fds):
        if self.spare is None:
            self.fork_spare()
        pid, sock, _ = self.spare
        self.spare = None
        try:
            socket.send_fds(sock, [json.dumps(limits).encode()], fds)
        except BaseException:
            sock.close()
            raise
        self.child, self.child_report = pid, sock

    def kill(self):
        """Kill the execution's processes. Killing pid 1 of its namespace ends all of them; the kernel's
        clean-up of the namespaces takes a few milliseconds, so we reap later (`reap`) and answer now. A
        set-up failure the child reported becomes the answer's error."""
        pid, self.child = self.child, None
        report, self.child_report = self.child_report, None
        if report is not None:  # written before the child exits, so before the host could have asked to kill
            report.setblocking(False)
            try:
                why = report.recv(1 << 16)
            except OSError:
                why = b""
            report.close()
            if why:
                self.error = "the execution's isolation could not be set up: " + why.decode(errors="replace")
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL) if NAMESPACED else os.killpg(pid, signal.SIGKILL)

    def reap(self):
        while self.dying:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            workdir = self.dying.pop(pid, None)
            if workdir and not NAMESPACED:
                import shutil
                shutil.rmtree(workdir, ignore_errors=True)

    def serve(self):
        self.control.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
        while True:
            if self.spare is None and self.error is None:
                try:
                    self.fork_spare()
                except OSError as e:
                    self.error = f"{type(e).__name__}: {e}"
            msg, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 8)
            if not msg:
                return
            self.reap()
            command = json.loads(msg)
            if command["op"] == "run":  # answered by the "kill" that ends the execution
                try:
                    self.run(command["limits"], fds)
                except Exception as e:
                    self.error = f"{type(e).__name__}: {e}"
                for fd in fds:
                    os.close(fd)
                continue
            self.kill()
            self.control.send(json.dumps({"error": self.error}).encode())
            self.error = None


def main():
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # nothing of our uid may ptrace us or open our /proc files
    site = os.environ.get("SANDBOX_SITE")
    if site:
        sys.path.append(site)
    for name in [MODULE] + os.environ.get("SANDBOX_PRELOAD", "").split(","):
        if name:
            __import__(name)
    # Every object so far stays out of the collector's way: a collection in a child would otherwise write
    # to (and so copy) every page the child shares with us, ~15 ms per execution (measured here). The
    # imports' garbage goes first, and the C library hands its free pages back: fewer pages for each fork
    # to map and each exit to unmap.
    gc.collect()
    with contextlib.suppress(AttributeError):  # a C library without malloc_trim keeps its pages
        libc.malloc_trim(0)
    gc.freeze()
    harden()  # a failure here ends the fork server before it says it is ready: the worker does not start
    control = socket.socket(fileno=CONTROL_FD)
    if NAMESPACED:
        # Be pid 1 of a pid namespace our user namespace owns, so that each execution's namespace can be
        # made with unshare() and undone with setns() (the container's own namespace is not ours to enter).
        _check(libc.unshare(CLONE_NEWPID), "unshare pid")
        pid = os.fork()
        if pid:
            control.close()
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    Server(control).serve()


if __name__ == "__main__":
    main()
