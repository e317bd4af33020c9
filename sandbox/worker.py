"""Warm sandbox worker: runs inside the isolation, forks once per execution.

Started by `sandbox.executor.Sandbox` as `python -I worker.py`, inside bubblewrap where available.
It imports only the standard library and pytest, so it runs with any interpreter that has pytest.

Protocol on stdin/stdout: length-prefixed JSON frames (4-byte big-endian length, UTF-8 JSON).
A request is {"code", "tests", "timeout_s", "memory_mb", "max_file_mb", "max_processes", "max_output"};
the reply is {"outcomes": {test: outcome}, "expected": [...], "runner", "timed_out", "exit_code",
"stdout", "stderr", "duration_s", "tampered"}.

Per execution: a fresh directory under the private /tmp holds `solution.py` and `test_solution.py`;
a forked child (new session, resource limits, stdin/stdout/stderr redirected to files) runs the tests and
writes one JSON line per finished test to a pipe; the worker enforces the wall timeout, then kills every
process the execution left (in its own pid namespace, `kill(-1)` does that, `setsid()` children included),
and removes the directory. Only the worker decides which tests were expected (from the test source's AST,
before any untrusted code runs) and a test that never reports counts as failed; exit codes and printed
output count for nothing.
"""
import ast
import ctypes
import itertools
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

WORK_ROOT = os.environ.get("SANDBOX_WORK_ROOT", "/tmp")
OWN_PID_NAMESPACE = os.environ.get("SANDBOX_OWN_PIDNS") == "1"
SOLUTION, TESTS = "solution.py", "test_solution.py"
PASSED, FAILED, ERROR, SKIPPED, MISSING = "passed", "failed", "error", "skipped", "missing"
DONE = "__done__"  # sent after the last test, so a lingering grandchild holding the pipe costs no wait


# ---------------------------------------------------------------- framing
def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack(">I", header)
    return json.loads(stream.read(size).decode("utf-8"))


def write_frame(stream, obj):
    data = json.dumps(obj).encode("utf-8")
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


# ---------------------------------------------------------------- what the tests are
def _is_parametrize(dec):
    """True for @pytest.mark.parametrize(...) / @mark.parametrize(...)."""
    if not isinstance(dec, ast.Call):
        return False
    f = dec.func
    return isinstance(f, ast.Attribute) and f.attr == "parametrize"


def _param_names(dec):
    try:
        names = ast.literal_eval(dec.args[0])
    except Exception:
        return None
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names)


def analyse_tests(source):
    """Expected test ids (base names) and whether the fast runner can run them.

    The fast runner handles module-level `test_*` functions with plain asserts, `pytest.raises` and
    `@pytest.mark.parametrize`; fixtures, classes, other decorators or marks go to real pytest."""
    tree = ast.parse(source)
    expected, fast = [], True
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            expected.append(node.name)
            args = [a.arg for a in node.args.args + node.args.kwonlyargs]
            covered = []
            for dec in node.decorator_list:
                if not _is_parametrize(dec) or _param_names(dec) is None:
                    fast = False
                    break
                covered += _param_names(dec)
            if isinstance(node, ast.AsyncFunctionDef) or set(args) - set(covered) or node.args.vararg:
                fast = False
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            fast = False
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    expected.append(f"{node.name}::{item.name}")
    if "fixture" in source or "usefixtures" in source:
        fast = False
    return expected, fast


# ---------------------------------------------------------------- the child (runs untrusted code)
class Reporter:
    """Writes one JSON line per test outcome to the result pipe, signed with the execution's nonce:
    lines written to the pipe by code that did not read the nonce out of this object are ignored."""

    def __init__(self, fd, nonce):
        self.fd, self.nonce = fd, nonce

    def send(self, test, outcome, message=""):
        record = {"nonce": self.nonce, "test": test, "outcome": outcome, "message": message[-2000:]}
        line = json.dumps(record) + "\n"
        os.write(self.fd, line.encode("utf-8"))


def _case_id(values):
    parts = []
    for v in values:
        parts.append(str(v) if isinstance(v, (int, float, str, bool, type(None))) and len(str(v)) < 40 else "?")
    return "-".join(parts)


def _cases(func):
    """(id suffix, kwargs) for each parametrized case of a test function; one plain case if none."""
    axes = []
    for mark in reversed(getattr(func, "pytestmark", [])):
        if mark.name != "parametrize":
            continue
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = []
        for i, row in enumerate(mark.args[1]):
            if hasattr(row, "values") and hasattr(row, "marks"):  # pytest.param(...)
                row = row.values
            row = (row,) if len(names) == 1 else tuple(row)
            rows.append((row, dict(zip(names, row))))
        axes.append(rows)
    if not axes:
        return [("", {})]
    cases = []
    for combo in itertools.product(*axes):
        kwargs, ids = {}, []
        for row, kw in combo:
            kwargs.update(kw)
            ids.append(_case_id(row))
        cases.append((f"[{'-'.join(ids)}]", kwargs))
    return cases


def _snapshot():
    """State a test must not change; compared before each report (tamper evidence, see README)."""
    import builtins
    return (sys.gettrace(), sys.getprofile(), builtins.__import__, builtins.isinstance, Reporter.send, os.write)


def run_fast(reporter, expected, module, codes):
    import pytest

    skip_types = (pytest.skip.Exception, pytest.xfail.Exception)
    namespace = {"__name__": "test_solution", "__file__": os.path.abspath(TESTS)}
    try:
        exec(module, namespace)  # the worker's own compilation: a rewritten file on disk changes nothing
    except BaseException:
        msg = "collection error: " + traceback.format_exc(limit=-3)
        for name in expected:
            reporter.send(name, ERROR, msg)
        return
    baseline = _snapshot()
    for name in expected:
        func = namespace.get(name)
        if not callable(func) or getattr(func, "__code__", None) is not codes.get(name):
            reporter.send(name, ERROR, "test function missing or replaced at import time")
            continue
        for suffix, kwargs in _cases(func):
            try:
                func(**kwargs)
                outcome, msg = PASSED, ""
            except skip_types as e:
                outcome, msg = SKIPPED, f"skip/xfail counts as not passed: {e}"
            except BaseException as e:  # SystemExit and KeyboardInterrupt are failures too
                outcome, msg = FAILED, "".join(traceback.format_exception_only(type(e), e))
            if _snapshot() != baseline or func.__code__ is not codes[name]:
                reporter.send(name + suffix, FAILED, "harness state was modified by the code under test")
                return
            reporter.send(name + suffix, outcome, msg)


def run_pytest(reporter, expected):
    import pytest

    class Plugin:
        def pytest_collectreport(self, report):
            if report.failed:
                for name in expected:
                    reporter.send(name, ERROR, "collection error: " + str(report.longrepr)[-1500:])

        def pytest_runtest_logreport(self, report):
            name = report.nodeid.split("::", 1)[-1]
            if report.when == "call" or (report.when == "setup" and not report.passed):
                if report.passed and not hasattr(report, "wasxfail"):
                    reporter.send(name, PASSED)
                elif report.skipped or hasattr(report, "wasxfail"):
                    reporter.send(name, SKIPPED, "skip/xfail counts as not passed")
                else:
                    reporter.send(name, ERROR if report.when == "setup" else FAILED, str(report.longrepr)[-1500:])

    args = [TESTS, "-q", "-p", "no:cacheprovider", "-p", "no:stepwise", "--noconftest",
            "-c", os.devnull, "--rootdir", os.getcwd(), "-o", "python_files=test_solution.py"]
    pytest.main(args, plugins=[Plugin()])


def child_main(request, result_fd, nonce, expected, fast, module, codes):
    """Runs in the forked child: limits first, then untrusted code. Never returns."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        cap = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        cap_err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(cap, 1)
        os.dup2(cap_err, 2)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, 65536)
        vm = _vm_size_bytes()
        mem = request["memory_mb"] << 20
        _limit(resource.RLIMIT_AS, vm + mem)
        _limit(resource.RLIMIT_CPU, int(request["timeout_s"]) + 1)
        _limit(resource.RLIMIT_FSIZE, request["max_file_mb"] << 20)
        _limit(resource.RLIMIT_NPROC, request["max_processes"])
        _limit(resource.RLIMIT_CORE, 0)
        sys.path.insert(0, os.getcwd())
        sys.argv = ["pytest"]
        reporter = Reporter(result_fd, nonce)
        del request
        if fast:
            run_fast(reporter, expected, module, codes)
        else:
            run_pytest(reporter, expected)
        reporter.send(DONE, DONE)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def _vm_size_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- the worker (trusted)
def _compile_tests(source):
    """The test module and its top-level test functions' code objects, compiled here before any
    untrusted code runs; the fast runner checks each test it calls is still one of these."""
    module = compile(source, TESTS, "exec")
    codes = {c.co_name: c for c in module.co_consts if hasattr(c, "co_name") and c.co_name.startswith("test")}
    return module, codes


def kill_leftovers(pid):
    """Kill everything the execution started. In our own pid namespace with a uid of our own,
    kill(-1) reaches every process we may signal but ourselves and init, setsid() children included."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if OWN_PID_NAMESPACE:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    while True:  # reap; our children and, when we are init, adopted orphans
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if reaped == 0:
            time.sleep(0.001)
            try:
                os.kill(pid, 0)
            except OSError:
                break


def _read_capped(path, limit):
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def execute(request, counter):
    start = time.monotonic()
    reply = {"outcomes": {}, "expected": [], "runner": "fast", "timed_out": False, "exit_code": None,
             "stdout": "", "stderr": "", "tampered": False}
    try:
        expected, fast = analyse_tests(request["tests"])
        module, codes = _compile_tests(request["tests"])
    except SyntaxError as e:
        reply.update(runner="none", stderr=f"test source does not parse: {e}", duration_s=time.monotonic() - start)
        return reply
    reply["expected"], reply["runner"] = expected, "fast" if fast else "pytest"
    workdir = os.path.join(WORK_ROOT, f"run{counter}")
    os.makedirs(workdir, mode=0o700)
    with open(os.path.join(workdir, SOLUTION), "w") as f:
        f.write(request["code"])
    with open(os.path.join(workdir, TESTS), "w") as f:
        f.write(request["tests"])
    read_fd, write_fd = os.pipe()
    nonce = os.urandom(16).hex()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.chdir(workdir)
        child_main(request, write_fd, nonce, expected, fast, module, codes)
    os.close(write_fd)

    deadline = start + request["timeout_s"]
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            reply["timed_out"] = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > 4 << 20 or f'"test": "{DONE}", "outcome": "{DONE}"'.encode() in buf:  # done, or a flood
            break
    os.close(read_fd)
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
        reply["exit_code"] = os.waitstatus_to_exitcode(status) if status else None
    except ChildProcessError:
        pass
    kill_leftovers(pid)

    for line in buf.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            test, outcome = str(record["test"]), str(record["outcome"])
        except Exception:
            continue
        if record.get("nonce") != nonce:
            continue
        if test == DONE:
            break
        if outcome == FAILED and "harness state was modified" in record.get("message", ""):
            reply["tampered"] = True
        # the first report of a test wins: a later forged "passed" cannot overwrite a failure
        reply["outcomes"].setdefault(test, outcome)
        if record.get("message") and len(reply["stderr"]) < request["max_output"]:
            reply["stderr"] += f"{test}: {record['message']}\n"
    limit = request["max_output"]
    reply["stdout"] = _read_capped(os.path.join(workdir, "stdout.txt"), limit)
    reply["stderr"] = (reply["stderr"] + _read_capped(os.path.join(workdir, "stderr.txt"), limit))[-limit:]
    wipe_scratch()
    reply["duration_s"] = time.monotonic() - start
    return reply


def wipe_scratch():
    """Remove every file the execution left in the writable places, so nothing passes from one
    execution to the next. In our own namespaces /tmp, /var/tmp and /dev/shm are ours alone."""
    places = [WORK_ROOT] + (["/var/tmp", "/dev/shm"] if OWN_PID_NAMESPACE else [])
    for place in places:
        try:
            entries = os.listdir(place)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(place, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def main():
    # Non-dumpable: processes of our uid (the code under test) cannot open /proc/<us>/fd or ptrace us,
    # so they cannot write to our reply pipe. PR_SET_DUMPABLE = 4.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:
        pass
    sys.dont_write_bytecode = True
    import pytest  # noqa: F401  (warm: imported once, inherited by every fork)

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # our own stdout must only carry frames
    sys.stdout = sys.stderr
    write_frame(stdout, {"ready": True, "pid": os.getpid(), "uid": os.getuid()})
    for counter in itertools.count():
        request = read_frame(stdin)
        if request is None:
            return
        try:
            reply = execute(request, counter)
        except Exception:
            reply = {"internal_error": traceback.format_exc()}
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
