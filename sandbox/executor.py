"""`Sandbox`: runs untrusted code against untrusted pytest tests and returns an `ExecutionResult`.

A pool of warm workers (`sandbox/worker.py`), each a long-lived process inside the strongest isolation
available (`sandbox/isolation.py`), forks once per execution. Outcomes are counted per test from the
worker's own record of which tests were expected and which reported, never from exit codes or output.
It never raises on bad code or tests: every call returns an `ExecutionResult`.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sandbox import isolation

logger = logging.getLogger(__name__)

PASSED = "passed"


@dataclass
class SandboxConfig:
    """Limits and pool size. Every limit here is enforced (see README 'Sandbox')."""

    timeout_s: float = 5.0  # wall-clock limit of one execution; every process it started is killed after
    memory_mb: int = 512  # address-space limit of the execution (RLIMIT_AS above the worker's own)
    max_file_mb: int = 16  # largest single file it may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of the worker's private tmpfs: bounds all files together (bwrap/unshare)
    max_processes: int = 32  # processes and threads of the execution (RLIMIT_NPROC, per-worker uid)
    max_output_chars: int = 8192  # stdout/stderr kept per execution
    num_workers: int = 0  # parallel workers; 0 = one per CPU core
    isolation: str = "auto"  # "auto" (strongest available), "bwrap", "unshare" or "process"

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
    total: int = 0  # tests expected from the test source (parametrized cases count one each)
    timed_out: bool = False
    test_outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/error/skipped/missing
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    runner: str = ""  # "fast" (plain test functions) or "pytest"
    tampered: bool = False  # the code under test modified the harness; all remaining tests failed

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
        """Whether test `name` passed; a parametrized test passes when all of its cases do."""
        cases = [o for t, o in self.test_outcomes.items() if t == name or t.startswith(name + "[")]
        return bool(cases) and all(o == PASSED for o in cases)


def add_solution_import(tests: str) -> str:
    """Tests import the code as module `solution`; add the import when the source lacks it."""
    if "from solution import" in tests or "import solution" in tests:
        return tests
    return "from solution import *\n" + tests


def result_from_reply(reply: dict) -> ExecutionResult:
    """Count outcomes: every expected test must report; a test that never reports has failed."""
    if "internal_error" in reply:
        return ExecutionResult(status="error", stderr="sandbox worker error:\n" + reply["internal_error"])
    outcomes: dict[str, str] = {}
    reported = reply["outcomes"]
    for name in reply["expected"]:
        cases = {t: o for t, o in reported.items() if t == name or t.startswith(name + "[")}
        outcomes.update(cases or {name: "missing"})
    passed = sum(o == PASSED for o in outcomes.values())
    errors = sum(o == "error" for o in outcomes.values())
    total = len(outcomes)
    if reply["timed_out"]:
        status = "timeout"
    elif total == 0:
        status = "error"
    elif passed == total:
        status = "passed"
    else:
        status = "error" if errors == total else "failed"
    return ExecutionResult(
        status=status,
        passed=passed,
        failed=total - passed - errors,
        errors=errors,
        total=total,
        timed_out=reply["timed_out"],
        test_outcomes=outcomes,
        duration_s=reply.get("duration_s", 0.0),
        stdout=reply.get("stdout", ""),
        stderr=reply.get("stderr", ""),
        runner=reply.get("runner", ""),
        tampered=reply.get("tampered", False),
    )


class _Worker:
    """One warm worker process and its pipes."""

    def __init__(self, index: int, level: str, config: SandboxConfig):
        argv, env = isolation.worker_command(level, index, config.tmp_mb)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        hello = self._read(timeout=60)
        if not hello or not hello.get("ready"):
            self.kill()
            self.close()
            raise RuntimeError(f"sandbox worker failed to start with isolation {level!r}: {argv[:3]}...")

    def request(self, payload: dict, timeout: float) -> dict | None:
        data = json.dumps(payload).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self._read(timeout)

    def _read(self, timeout: float) -> dict | None:
        # a watchdog kills a worker that stops answering; the blocked read then sees EOF
        timer = threading.Timer(timeout, self.kill)
        timer.start()
        try:
            header = self.proc.stdout.read(4)
            if len(header) < 4:
                return None
            (size,) = struct.unpack(">I", header)
            body = self.proc.stdout.read(size)
            return json.loads(body) if len(body) == size else None
        except (OSError, ValueError):
            return None
        finally:
            timer.cancel()

    def kill(self):
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        try:
            self.proc.stdout.close()
        except OSError:
            pass


class Sandbox:
    """Runs code against tests in isolated, warm workers. Thread-safe; use as a context manager or
    call `close()`. `isolation` says which isolation is in force."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        level = isolation.detect_level(self.config.isolation)
        self.num_workers = self.config.num_workers or os.cpu_count() or 1
        self._idle: queue.Queue[int] = queue.Queue()
        self._workers: list[_Worker | None] = [None] * self.num_workers
        self._lock = threading.Lock()
        self.workers_restarted = 0
        # Workers are started from one long-lived thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG)
        # fires when the *thread* that started it exits, e.g. a finished run_matrix pool thread.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        self.isolation = self._start_first_worker(level)
        log = logger.warning if self.isolation == "process" else logger.info
        log("sandbox isolation: %s", isolation.describe(self.isolation))
        for i in range(self.num_workers):
            self._idle.put(i)

    # ------------------------------------------------------------ public interface
    def execute_tests(self, code: str, tests: str, timeout_s: float | None = None) -> ExecutionResult:
        """Run `code` (as module `solution`) against the pytest source `tests`."""
        start = time.monotonic()
        timeout = timeout_s or self.config.timeout_s
        payload = {
            "code": code,
            "tests": add_solution_import(tests),
            "timeout_s": timeout,
            "memory_mb": self.config.memory_mb,
            "max_file_mb": self.config.max_file_mb,
            "max_processes": self.config.max_processes,
            "max_output": self.config.max_output_chars,
        }
        index = self._idle.get()
        try:
            worker = self._worker(index)
            reply = worker.request(payload, timeout=timeout + 30)
            if reply is None:  # the worker died (killed by the code) or hung: replace it
                self._replace(index)
                return ExecutionResult(status="error", duration_s=time.monotonic() - start,
                                       stderr="the sandbox worker died during this execution")
        except Exception as e:  # never raise on bad code; an infrastructure failure is reported
            self._replace(index)
            return ExecutionResult(status="error", stderr=f"sandbox failure: {e}")
        finally:
            self._idle.put(index)
        return result_from_reply(reply)

    def validate_tests_against_solution(self, tests: list[str], reference_solution: str) -> list[bool]:
        """For each test source, whether all of its tests pass on the reference solution (validity)."""
        results = self.run_matrix([reference_solution], tests)[0]
        return [r.all_passed for r in results]

    def run_matrix(self, codes: list[str], tests: list[str]) -> list[list[ExecutionResult]]:
        """Result of every code against every test source: `matrix[i][j]` is codes[i] on tests[j].
        The pairs are spread over the parallel workers."""
        pairs = [(i, j) for i in range(len(codes)) for j in range(len(tests))]
        matrix: list[list[ExecutionResult | None]] = [[None] * len(tests) for _ in codes]
        with ThreadPoolExecutor(self.num_workers) as pool:
            for (i, j), result in zip(pairs, pool.map(lambda p: self.execute_tests(codes[p[0]], tests[p[1]]), pairs)):
                matrix[i][j] = result
        return matrix  # type: ignore[return-value]

    def close(self):
        for i, worker in enumerate(self._workers):
            if worker is not None:
                worker.close()
                self._workers[i] = None
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
        """Start worker 0 now, so that a level the kernel refuses is found at once, not as an error on
        every execution. Under "auto" a level that fails to start (bubblewrap installed but user
        namespaces refused, as in some containers) gives way to the next one, with a warning; a level
        asked for by name raises. Returns the level in force."""
        while True:
            self.isolation = level
            try:
                self._worker(0)
                return level
            except (RuntimeError, OSError) as e:
                weaker = [lv for lv in isolation.available_levels()
                          if isolation.LEVELS.index(lv) > isolation.LEVELS.index(level)]
                if self.config.isolation != "auto" or not weaker:
                    self._spawner.shutdown(wait=False)
                    raise RuntimeError(f"sandbox isolation {level!r} failed to start on this machine: {e}") from e
                logger.warning("sandbox isolation %r failed to start (%s); falling back to %r", level, e, weaker[0])
                level = weaker[0]

    def _worker(self, index: int) -> _Worker:
        if self._workers[index] is None:
            self._workers[index] = self._spawner.submit(_Worker, index, self.isolation, self.config).result()
        return self._workers[index]  # type: ignore[return-value]

    def _replace(self, index: int):
        worker = self._workers[index]
        if worker is not None:
            worker.kill()
            worker.close()
        self._workers[index] = None
        with self._lock:
            self.workers_restarted += 1
