"""`Sandbox`: runs untrusted code against untrusted pytest tests and returns an `ExecutionResult`.

Each worker is two fork servers (`sandbox/zygote.py`), each in a container of its own
(`sandbox/isolation.py`): one for the candidate's code, one for the tests. Per execution both fork a fresh
child; the host hands the code to the candidate's child and the tests to the tests' child directly, on
sockets the fork servers pass on but never read, and connects the two children with a socket of their own.
The tests call the candidate's functions across it with plain values only (`sandbox/remote.py`), so the
process that runs the candidate's code holds nothing that decides or reports an outcome. The tests' child
first reports how many cases each test collected, then one line per case; the host counts outcomes against
the tests it expected from the source's syntax tree, each with as many cases as the larger of the count the
tree shows and the collected one (a test whose count neither gives fails), never from exit codes or output.
It never raises on bad code or tests, and bounds what it reads from them (`parse_source`, `_read_reports`).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import itertools
import json
import logging
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sandbox import cgroups, isolation, wire
from sandbox.wire import COLLECTED, DONE, OUTCOMES, PASSED, PROTOCOL

logger = logging.getLogger(__name__)

MAX_REPORT_BYTES = 16 << 20  # a test process that reports more is cut off (the rest counts as missing)
MAX_OUTCOMES = 20_000  # distinct test ids the host keeps from one execution (later ones count as missing)
MAX_SOURCE_CHARS = 4 << 20  # a larger test source is not analysed: the execution is an error


@dataclass
class SandboxConfig:
    """Limits and pool size. Every limit here is enforced (see docs/sandbox.md)."""

    timeout_s: float = 5.0  # wall-clock limit of one execution; every process it started is killed after
    memory_mb: int = 512  # memory of each side of an execution: all its processes together with a cgroup, else per process
    max_file_mb: int = 16  # largest single file it may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of each execution's private tmpfs (/tmp, and /dev/shm): bounds all files together
    max_processes: int = 32  # processes and threads of each side of an execution (pids cgroup, else RLIMIT_NPROC)
    max_output_chars: int = 8192  # output kept per execution of each process and stream (candidate/tests, stdout/stderr)
    num_workers: int = 0  # parallel workers; 0 = one per CPU core
    isolation: str = "auto"  # "auto" (strongest available), "bwrap", "unshare" or "process"
    allow_unisolated: bool = False  # let the "process" level run as root: no network, file or process isolation

    def __post_init__(self):
        if self.timeout_s <= 0 or self.memory_mb <= 0 or self.max_processes < 1:
            raise ValueError("timeout_s, memory_mb and max_processes must be positive")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0 (0 means one per CPU core)")


@dataclass
class ExecutionResult:
    """Outcome of one code string against one test source."""

    status: str  # "passed" (all expected tests passed), "failed", "error" (nothing ran), "timeout"
    passed: int = 0
    failed: int = 0  # failed, skipped, xfailed, or expected but never reported
    errors: int = 0  # collection or setup errors
    total: int = 0  # cases expected (each case of a parametrized test counts one; `count_outcomes`)
    timed_out: bool = False
    test_outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/error/skipped/missing
    duration_s: float = 0.0
    stdout: str = ""  # the candidate's output, then the tests' (each capped on its own)
    stderr: str = ""  # the tests' failure messages, then the candidate's errors, then the tests' own
    runner: str = ""  # "fast" (plain test functions) or "pytest"
    tampered: bool = False  # a process broke the protocol: the candidate's with the tests', or the tests' with the host
    _cases = None  # passed_test's index, built on first use; not a field (kept out of asdict, repr and ==)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def failing_tests(self) -> list[str]:
        return [name for name, outcome in self.test_outcomes.items() if outcome != PASSED]

    def passed_test(self, name: str) -> bool:
        """Whether test `name` passed; a parametrized test passes when all of its cases do, and a `Test*`
        class given by its name alone when all of its methods do."""
        if self._cases is None:  # built once: asking for every test stays linear in their number
            self._cases = {}
            for test, outcome in self.test_outcomes.items():
                base = test.split("[", 1)[0]
                for key in {base, base.split("::", 1)[0]}:
                    self._cases.setdefault(key, []).append(outcome)
        cases = self._cases.get(name, [])
        return bool(cases) and all(o == PASSED for o in cases)


def add_solution_import(tests: str) -> str:
    """Tests import the code as module `solution`; add the import when the source lacks it."""
    if "from solution import" in tests or "import solution" in tests:
        return tests
    return "from solution import *\n" + tests


# ---------------------------------------------------------------- what the tests are
def parse_source(source: str) -> ast.Module:
    """`ast.parse` for untrusted text, bounded: SyntaxError also for a source over MAX_SOURCE_CHARS, one with
    NUL bytes, and one nested too deeply for the parser (which raises RecursionError or MemoryError then).
    Every host-side reading of a test source goes through here."""
    if len(source) > MAX_SOURCE_CHARS:
        raise SyntaxError(f"source of {len(source)} characters (the limit is {MAX_SOURCE_CHARS})")
    try:
        return ast.parse(source)
    except ValueError as e:
        raise SyntaxError(str(e)) from None
    except (RecursionError, MemoryError) as e:
        raise SyntaxError(f"nested too deeply to parse ({type(e).__name__})") from None


def _request(tests: str) -> dict:
    """What the tests' process is sent for one execution (SyntaxError if `tests` does not parse). `cases`
    (each test's case count from the syntax tree, None where it cannot tell) is the host's, not the child's."""
    tests = add_solution_import(tests)
    expected, fast = analyse_tests(tests)
    return {"tests": tests, "expected": [name for name, _ in expected], "cases": [n for _, n in expected],
            "fast": fast}


def _is_parametrize(dec) -> bool:
    return isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "parametrize"


def _param_names(dec) -> list[str] | None:
    """The argument names of a parametrize decorator, given by position or as `argnames=`; None if unknown
    or if `dec` is another decorator."""
    if not _is_parametrize(dec):
        return None
    node = dec.args[0] if dec.args else next((k.value for k in dec.keywords if k.arg == "argnames"), None)
    try:
        names = ast.literal_eval(node)
    except Exception:
        return None
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names) if isinstance(names, (list, tuple)) else None


def _case_count(decorators) -> int | None:
    """Cases of a test from its parametrize decorators: the product of their argument lists' lengths (at
    most MAX_OUTCOMES + 1: more can never all report); None when a list is not written out in the source."""
    count = 1
    for dec in decorators:
        if not _is_parametrize(dec):
            continue
        values = dec.args[1] if len(dec.args) > 1 else next((k.value for k in dec.keywords if k.arg == "argvalues"), None)
        if not isinstance(values, (ast.List, ast.Tuple)) or any(isinstance(v, ast.Starred) for v in values.elts):
            return None
        count = min(count * len(values.elts), MAX_OUTCOMES + 1)
    return count


def test_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]]:
    """The tests pytest collects from a module, in source order: (id, function, its class or None) for every
    module-level `test*` function and every `test*` method of a `Test*` class (id `Class::method`)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            out.append((node.name, node, None))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            out += [(f"{node.name}::{f.name}", f, node) for f in node.body
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test")]
    return out


@functools.lru_cache(maxsize=1024)
def analyse_tests(source: str) -> tuple[tuple[tuple[str, int | None], ...], bool]:
    """The expected tests, as (id, case count from the syntax tree or None: `_case_count`), and whether the
    fast runner can run them (SyntaxError if the source does not parse: `parse_source`). The fast runner
    takes module-level `test_*` functions with plain asserts, `pytest.raises` and `@pytest.mark.parametrize`;
    fixtures, classes, other decorators or marks go to pytest. Linear in the source's size. Remembered per
    source: `run_matrix` runs each test source against every code."""
    expected, fast = {}, "fixture" not in source and "pytest.param" not in source
    for name, node, cls in test_functions(parse_source(source)):
        expected.setdefault(name, _case_count(node.decorator_list + (cls.decorator_list if cls else [])))
        args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        covered = []
        for dec in node.decorator_list:
            names = _param_names(dec)
            if names is None:
                fast = False
                break
            covered += names
        if cls or isinstance(node, ast.AsyncFunctionDef) or set(args) - set(covered) or node.args.vararg:
            fast = False
    return tuple(expected.items()), fast


def required_cases(from_source: int | None, collected: int | None) -> int | None:
    """How many cases of a test must report: the larger of its count from the syntax tree and the count the
    tests' process collected (fixture parameters, lists built at run time), at least 1; None if neither is
    known (the test then fails)."""
    known = [n for n in (from_source, collected) if n is not None]
    return max(max(known), 1) if known else None


def count_outcomes(expected: dict[str, int | None], reported: dict[str, str], timed_out: bool,
                   broken: bool = False) -> dict:
    """Every case of every expected test (name -> `required_cases`) must report; one that never reports
    has failed ("missing": `name` itself for a test of one case, else `name[#missing k]`), and so has a test
    whose case count is unknown (`name[#uncounted]`). With `broken` (the sandbox itself failed: a fork
    server died or an execution could not be isolated) every test that did not pass is an error and so is
    the execution, as when nothing ran. Linear in the tests; the missing cases it adds are bounded (beyond
    MAX_OUTCOMES, one entry stands for all of a test's)."""
    by_base: dict[str, dict[str, str]] = {}
    for test, outcome in reported.items():
        by_base.setdefault(test.split("[", 1)[0], {})[test] = outcome
    outcomes: dict[str, str] = {}
    budget = MAX_OUTCOMES
    for name, need in expected.items():
        cases = by_base.get(name, {})
        outcomes.update(cases)
        if need is None:
            outcomes[f"{name}[#uncounted]"] = "missing"
        elif not cases:
            outcomes.update({name: "missing"} if need == 1 or budget < need else
                            {f"{name}[#missing {k}]": "missing" for k in range(1, need + 1)})
        elif len(cases) < need:
            short = need - len(cases)
            outcomes.update({f"{name}[#missing]": "missing"} if budget < short else
                            {f"{name}[#missing {k}]": "missing" for k in range(1, short + 1)})
        budget -= max(need or 1, 1)
    if broken:
        outcomes = {test: o if o == PASSED else "error" for test, o in outcomes.items()}
    passed = sum(o == PASSED for o in outcomes.values())
    errors = sum(o == "error" for o in outcomes.values())
    total = len(outcomes)
    if broken and passed < total:
        status = "error"
    elif timed_out:
        status = "timeout"
    else:  # all errors, or no test at all: nothing ran
        status = "error" if errors == total else "passed" if passed == total else "failed"
    return dict(status=status, passed=passed, failed=total - passed - errors, errors=errors, total=total,
                timed_out=timed_out, test_outcomes=outcomes)


# ---------------------------------------------------------------- a worker: two fork servers
class _Zygote:
    """One fork server in its container, and its control socket."""

    def __init__(self, level: str, side: str, index: int, tmp_mb: int, work_root: str):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv, env = isolation.container_command(level, side, index, theirs.fileno(), tmp_mb, work_root)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        theirs.close()
        hello = self.receive(timeout=60)
        if not hello or not hello.get("ready"):
            self.log.seek(0)
            why = self.log.read()[-2000:].decode(errors="replace").strip()
            self.close()
            raise RuntimeError(f"the {side} fork server did not start at isolation {level!r}: {why or 'no message'}")

    def send(self, message: dict, fds=()):
        socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))

    def receive(self, timeout: float) -> dict | None:
        self.control.settimeout(timeout)
        try:
            data = self.control.recv(1 << 16)
            return json.loads(data) if data else None
        except (OSError, ValueError):
            return None

    def close(self):
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.control.close()
        self.log.close()


class _Stale(Exception):
    """A worker that cannot take an execution: replace it and run the execution on a fresh one."""


class _Worker:
    """The candidate's and the tests' fork servers of one worker slot, with their cgroups: two pairs per side,
    used in turn, so that an execution starts while the last one's processes are still being torn down
    (killed, but the kernel's clean-up of their namespaces takes milliseconds) without sharing its limits."""

    def __init__(self, index: int, level: str, config: SandboxConfig, name: str):
        self.config = config
        self.work_root = tempfile.mkdtemp(prefix=f"sandbox-worker{index}-") if level == "process" else ""
        self.limits: dict[str, list[cgroups.Cgroups]] = {side: [] for side in isolation.SIDES}
        self.zygotes: dict[str, _Zygote] = {}
        self.executions = 0
        try:
            for side in isolation.SIDES:
                if cgroups.available():
                    self.limits[side] = [cgroups.Cgroups(f"{name}-{side}{turn}", config.memory_mb,
                                                         config.max_processes) for turn in (0, 1)]
                self.zygotes[side] = _Zygote(level, side, index, config.tmp_mb, self.work_root)
        except BaseException:
            self.close()
            raise

    def execute(self, code: str, request: dict, timeout: float) -> tuple[dict, bool]:
        """Run one execution; (reply, healthy). The worker is unhealthy when a fork server stopped
        answering or an execution's isolation could not be set up: it is then replaced, and the tests that
        did not report are errors, not failures. `_Stale` (before anything ran): processes of an earlier
        execution could not be killed. Whatever happens, the execution is killed and its descriptors closed."""
        start = time.monotonic()
        deadline = start + timeout
        turn, self.executions = self.executions % 2, self.executions + 1
        limits = {side: pair[turn] for side, pair in self.limits.items() if pair}
        if not all(limit.empty() for limit in limits.values()):
            raise _Stale("processes of the execution before last could not be killed")
        for limit in limits.values():
            limit.reset()
        settings = {"timeout_s": timeout, "memory_mb": self.config.memory_mb, "max_file_mb": self.config.max_file_mb,
                    "max_processes": self.config.max_processes}
        sockets: list[socket.socket] = []
        outputs: dict[str, int] = {}
        got, healthy = _Reports(), True
        try:
            for _ in range(3):  # each pair joins `sockets` at once, so that it is closed whatever fails next
                sockets += socket.socketpair()
            c_host, c_child, t_host, t_child, c_peer, t_peer = sockets
            for name in ("c_out", "c_err", "t_out", "t_err"):
                outputs[name] = os.memfd_create(f"sandbox-{name}")
            try:
                for side, fds in (("candidate", [c_child, c_peer, outputs["c_out"], outputs["c_err"]]),
                                  ("tests", [t_child, t_peer, outputs["t_out"], outputs["t_err"]])):
                    fds = [f if isinstance(f, int) else f.fileno() for f in fds]
                    self.zygotes[side].send({"op": "run", "limits": settings},
                                            fds + (limits[side].fds if side in limits else []))
            finally:
                for s in (c_child, t_child, c_peer, t_peer):
                    s.close()
            try:
                _send_before(c_host, {"code": code}, deadline)
                _send_before(t_host, request, deadline)
                got = _read_reports(t_host, deadline, set(request["expected"]))
            except socket.timeout:
                got.timed_out = True
            except OSError:
                pass  # a child died early: what it reported counts, and what it did not is missing
        finally:
            for s in sockets:
                s.close()
            try:
                healthy = self._kill(got.messages)
                stdout, stderr = self._outputs(outputs, got.messages)
            finally:
                for fd in outputs.values():
                    os.close(fd)
        expected = {name: required_cases(n, got.collected.get(name))
                    for name, n in zip(request["expected"], request["cases"])}
        # a broken worker is not the code's or the tests' doing: no test may look failed because of it
        reply = count_outcomes(expected, got.outcomes, got.timed_out, broken=not healthy)
        reply.update(stdout=stdout, stderr=stderr, tampered=got.tampered, duration_s=time.monotonic() - start,
                     runner="fast" if request["fast"] else "pytest")
        return reply, healthy

    def _kill(self, messages: list[str]) -> bool:
        """Tell both fork servers to kill their execution; False if one did not answer or reported a failure
        (its own, or that the execution's isolation could not be set up: the child tells it on a socket
        the code it runs cannot reach, never on the stderr that code can write)."""
        healthy, told = True, []
        for side, zygote in self.zygotes.items():
            try:
                zygote.send({"op": "kill"})
                told.append(side)
            except OSError as e:
                healthy = False
                messages.append(f"sandbox: the {side} fork server failed: {e}\n")
        for side in told:
            answer = self.zygotes[side].receive(timeout=10)
            if answer is None or answer.get("error"):
                healthy = False
                messages.append(f"sandbox: the {side} fork server failed: {answer and answer.get('error')}\n")
        return healthy

    def _outputs(self, outputs: dict[str, int], messages: list[str]) -> tuple[str, str]:
        """stdout (the candidate's, then the tests'), stderr (the reports' and fork servers' messages, then
        the candidate's and the tests' errors), each part capped on its own so that no side can push the
        other's out."""
        cap = self.config.max_output_chars
        read = {n: _read_capped(outputs[n], cap) if n in outputs else "" for n in ("c_out", "c_err", "t_out", "t_err")}
        return read["c_out"] + read["t_out"], _cap("".join(messages), cap) + read["c_err"] + read["t_err"]

    def close(self):
        for zygote in self.zygotes.values():
            zygote.close()
        for pair in self.limits.values():
            for limit in pair:
                limit.close()
        if self.work_root:
            import shutil
            shutil.rmtree(self.work_root, ignore_errors=True)


def _send_before(sock, message: dict, deadline: float):
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    wire.send_frame(sock, message)


@dataclass
class _Reports:
    """What the tests' process reported on its socket to the host (`_read_reports`)."""

    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> outcome, expected tests' cases only
    collected: dict[str, int] = field(default_factory=dict)  # test -> the cases it collected, before running
    messages: list[str] = field(default_factory=list)
    timed_out: bool = False
    tampered: bool = False


def _read_reports(sock, deadline: float, expected) -> _Reports:
    """Outcome lines from the tests' process until it says it is done, the deadline passes or it ends.
    Linear in what it sends, however it splits its lines; bounded in what it keeps (ids of the `expected`
    tests only, at most MAX_OUTCOMES, messages for the first 1000). A line that is not a report is skipped;
    one nested too deeply to parse also marks the execution tampered. Never raises on what it reads."""
    got, buffer, size = _Reports(), bytearray(), 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            got.timed_out = True
            return got
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            got.timed_out = True
            return got
        except OSError:  # a child died early: what it reported counts, and what it did not is missing
            return got
        if not chunk:
            return got
        searched = len(buffer)  # the part before has no newline
        buffer += chunk
        size += len(chunk)
        if size > MAX_REPORT_BYTES:  # a flood: what it reported so far counts, the rest is missing
            return got
        start, end = 0, buffer.find(b"\n", searched)
        while end >= 0:
            if _read_line(bytes(buffer[start:end]), got, expected):
                return got
            start, end = end + 1, buffer.find(b"\n", end + 1)
        del buffer[:start]


def _read_line(line: bytes, got: _Reports, expected) -> bool:
    """One report line into `got`; True when it is the last (DONE)."""
    try:
        record = json.loads(line)
        test, outcome, message = str(record["t"]), str(record.get("o", "")), str(record.get("m", ""))
        counts = record.get("c") if test == COLLECTED else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError) as e:
        got.tampered |= isinstance(e, (RecursionError, MemoryError))  # nested deeper than any report: not the runner's
        return False
    if test == DONE:
        return True
    if test == PROTOCOL:
        got.tampered = True
    elif test == COLLECTED:
        if type(counts) is dict and not got.collected:  # the first collection report counts
            got.collected = {name: min(n, MAX_OUTCOMES + 1) for name, n in counts.items()
                             if name in expected and type(n) is int and n >= 0}
    elif outcome in OUTCOMES and test.split("[", 1)[0] in expected and len(got.outcomes) < MAX_OUTCOMES:
        got.outcomes.setdefault(test, outcome)  # the first report of a test wins
    if message and len(got.messages) < 1000:
        got.messages.append(f"{test[:200]}: {message[:2000]}\n")
    return False


def _read_capped(fd: int, limit: int) -> str:
    data = os.pread(fd, limit + 1, 0)
    return data[:limit].decode("utf-8", "replace") + ("\n[output truncated]" if len(data) > limit else "")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit + 20 else text[:limit] + "\n[output truncated]"


# ---------------------------------------------------------------- the pool
_SERIALS = itertools.count()
_WORKER_SERIALS = itertools.count()  # every worker's cgroups get fresh names, replacements too


class Sandbox:
    """Runs code against tests in isolated, warm workers. Thread-safe; use as a context manager or
    call `close()`. `isolation` names the level in force; `isolation_description` says what it isolates;
    `isolation_record()` is both, as runs and reports record them."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        level = isolation.detect_level(self.config.isolation)
        self.num_workers = self.config.num_workers or os.cpu_count() or 1
        self._idle: queue.Queue[int] = queue.Queue()
        self._workers: list[_Worker | None] = [None] * self.num_workers
        self._lock = threading.Lock()
        self.workers_restarted = 0
        self.cgroups = cgroups.available()
        self._serial = next(_SERIALS)  # names this sandbox's cgroups apart from other sandboxes of the process
        # Workers are started from one long-lived thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG)
        # fires when the *thread* that started it exits, e.g. a finished run_matrix pool thread.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        self.isolation = self._start_first_worker(level)
        self.isolation_description = isolation.describe(self.isolation, self.cgroups)
        if self.isolation == "process" and os.geteuid() == 0:
            self.isolation_description += "; running as root, allowed by allow_unisolated (--allow-unisolated)"
        log = logger.warning if self.isolation == "process" else logger.info
        log("sandbox isolation: %s", self.isolation_description)
        for i in range(self.num_workers):
            self._idle.put(i)

    def isolation_record(self) -> dict:
        """The isolation in force, as a run's config.json, an evaluation report and `run_inference.py --json`
        record it: {"level": "bwrap" | "unshare" | "process", "description": what it isolates}."""
        return {"level": self.isolation, "description": self.isolation_description}

    # ------------------------------------------------------------ public interface
    def execute_tests(self, code: str, tests: str, timeout_s: float | None = None) -> ExecutionResult:
        """Run `code` (as module `solution`) against the pytest source `tests`."""
        start = time.monotonic()
        timeout = timeout_s or self.config.timeout_s
        try:
            request = _request(tests)
        except SyntaxError as e:  # `parse_source` turns every failure to read untrusted text into one
            return ExecutionResult(status="error", runner="none", stderr=f"test source does not parse: {e}",
                                   duration_s=time.monotonic() - start)
        index = self._idle.get()
        try:
            try:
                reply, healthy = self._worker(index).execute(code, request, timeout)
            except _Stale as e:
                logger.warning("sandbox worker %d replaced: %s", index, e)
                self._replace(index)
                reply, healthy = self._worker(index).execute(code, request, timeout)
            if not healthy:  # a fork server stopped answering, or an execution could not be isolated
                self._replace(index)
        except Exception as e:  # never raise on bad code; an infrastructure failure is reported
            self._replace(index)
            return ExecutionResult(status="error", stderr=f"sandbox failure: {e}", duration_s=time.monotonic() - start)
        finally:
            self._idle.put(index)
        return ExecutionResult(**reply)

    def validate_tests_against_solution(self, tests: list[str], reference_solution: str) -> list[bool]:
        """For each test source, whether all of its tests pass on the reference solution (validity)."""
        return [r.all_passed for r in self.run_matrix([reference_solution], tests)[0]]

    def execute_pairs(self, pairs: list[tuple[str, str]]) -> list[ExecutionResult]:
        """`execute_tests(code, tests)` for every (code, tests) pair, spread over the parallel workers."""
        with ThreadPoolExecutor(self.num_workers) as pool:
            return list(pool.map(lambda pair: self.execute_tests(*pair), pairs))

    def run_matrix(self, codes: list[str], tests: list[str]) -> list[list[ExecutionResult]]:
        """Result of every code against every test source: `matrix[i][j]` is codes[i] on tests[j]."""
        results = iter(self.execute_pairs([(code, test) for code in codes for test in tests]))
        return [[next(results) for _ in tests] for _ in codes]

    def close(self):
        for i in range(len(self._workers)):
            self._replace(i, count=False)
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------ workers
    def _start_first_worker(self, level: str) -> str:
        """Start worker 0 now and run one execution on it, so that a level the kernel refuses is found at
        once, not as an error on every execution. Under "auto" a level that fails (bubblewrap installed but
        user namespaces refused, as in some containers) gives way to the next one, with a warning; a level
        asked for by name raises. The "process" level as root needs `allow_unisolated` (every entry point's
        `--allow-unisolated`). Returns the level."""
        while True:
            if level == "process" and os.geteuid() == 0 and not self.config.allow_unisolated:
                self._spawner.shutdown(wait=False)
                raise RuntimeError(
                    "sandbox isolation 'process' would run untrusted code as root with full access to this "
                    "machine's files, network and processes; install bubblewrap (apt-get install bubblewrap), "
                    "or accept that: --allow-unisolated (run_training.py, run_inference.py, python -m evaluation), "
                    "or SandboxConfig(allow_unisolated=True) from Python")
            self.isolation = level
            try:
                reply, healthy = self._worker(0).execute("def f():\n    return 1\n",
                                                         _request("def test_f():\n    assert f() == 1\n"), timeout=30)
                if reply["status"] != "passed" or not healthy:
                    raise RuntimeError(f"a trivial execution did not pass: {reply['stderr'][-1000:]}")
                return level
            except (RuntimeError, OSError) as e:
                self._replace(0, count=False)
                weaker = [lv for lv in isolation.available_levels()
                          if isolation.LEVELS.index(lv) > isolation.LEVELS.index(level)]
                if self.config.isolation != "auto" or not weaker:
                    self._spawner.shutdown(wait=False)
                    raise RuntimeError(f"sandbox isolation {level!r} failed to start on this machine: {e}") from e
                logger.warning("sandbox isolation %r failed to start (%s); falling back to %r", level, e, weaker[0])
                level = weaker[0]

    def _worker(self, index: int) -> _Worker:
        if self._workers[index] is None:
            # a fresh name: a replacement never shares a cgroup with a process its predecessor could not kill
            name = f"sandbox{self._serial}-worker{index}-{next(_WORKER_SERIALS)}"
            self._workers[index] = self._spawner.submit(_Worker, index, self.isolation, self.config, name).result()
        return self._workers[index]  # type: ignore[return-value]

    def _replace(self, index: int, count: bool = True):
        worker = self._workers[index]
        if worker is not None:
            worker.close()
        self._workers[index] = None
        if count:
            with self._lock:
                self.workers_restarted += 1
