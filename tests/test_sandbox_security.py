"""Hostile code and tests: every snippet is contained, gets the right outcome, and leaves nothing running.

Each hostile test source asserts that the attack *failed* inside the sandbox, so a passing execution means
the sandbox held; the host-side checks (no process left, no file written, no connection made) confirm it.
"""
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from sandbox import Sandbox, SandboxConfig
from sandbox.isolation import detect_level



@pytest.fixture(scope="module", params=["bwrap", "unshare"])
def box(request):
    """A sandbox at each namespace-based isolation level this machine has (bwrap; unshare when root)."""
    try:
        detect_level(request.param)
    except RuntimeError:
        pytest.skip(f"isolation {request.param} not available here")
    config = SandboxConfig(num_workers=1, timeout_s=3, memory_mb=256, max_processes=16, isolation=request.param)
    with Sandbox(config) as sb:
        yield sb


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def sleeper(marker: str) -> str:
    return f"['python3', '-c', 'import time; time.sleep(300)  # {marker}']"


def run(box, code, tests, **kw):
    return box.execute_tests(code, tests, **kw)


# ----------------------------------------------------------------- limits
def test_busy_loop_times_out(box):
    t = time.monotonic()
    r = run(box, "def spin():\n    while True:\n        pass\n", "def test_a():\n    spin()\n", timeout_s=1)
    assert r.status == "timeout" and r.passed == 0
    assert time.monotonic() - t < 5


def test_long_sleep_is_killed_with_its_processes(box):
    marker = uuid.uuid4().hex
    code = f"import subprocess, time\nsubprocess.Popen({sleeper(marker)})\ntime.sleep(100)\n"
    r = run(box, code, "def test_a():\n    pass\n", timeout_s=1)
    assert r.timed_out and r.passed == 0
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_setsid_grandchild_is_killed(box):
    marker = uuid.uuid4().hex
    code = (
        "import os, subprocess\n"
        "if os.fork() == 0:\n    os.setsid()\n"
        f"    subprocess.Popen({sleeper(marker)}, start_new_session=True)\n    os._exit(0)\n"
        "os.wait()\n"
    )
    r = run(box, code, "def test_a():\n    pass\n")
    assert r.all_passed  # the code itself returns normally
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_bounded_fork_bomb_hits_the_process_limit(box):
    marker = uuid.uuid4().hex
    code = (
        "import os, time\n"
        "def bomb():\n    children = 0\n"
        "    for _ in range(200):\n        pid = os.fork()\n"
        f"        if pid == 0:\n            time.sleep(30)  # {marker}\n            os._exit(0)\n"
        "        children += 1\n    return children\n"
    )
    tests = "import pytest\n\ndef test_limit():\n    with pytest.raises(OSError):\n        bomb()\n"
    r = run(box, code, tests)
    assert r.all_passed, r.stderr
    assert box.execute_tests("def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n").all_passed


def test_memory_bomb_raises_memory_error(box):
    code = "def eat():\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20))\n"
    tests = "import pytest\n\ndef test_mem():\n    with pytest.raises(MemoryError):\n        eat()\n"
    assert run(box, code, tests).all_passed


def test_huge_file_is_stopped_by_the_file_size_limit(box):
    code = "def write():\n    with open('big.bin', 'wb') as f:\n        for _ in range(100):\n            f.write(b'x' * 2**20)\n"
    tests = "import pytest\n\ndef test_big():\n    with pytest.raises(OSError):\n        write()\n"
    assert run(box, code, tests).all_passed


def test_many_files_fill_only_the_private_tmpfs(box):
    code = (
        "def spam():\n    for i in range(100000):\n"
        "        with open(f'f{i}.bin', 'wb') as f:\n            f.write(b'x' * 65536)\n"
    )
    tests = "import pytest\n\ndef test_many():\n    with pytest.raises(OSError):\n        spam()\n"
    assert run(box, code, tests, timeout_s=10).all_passed
    # the next execution gets a clean, empty directory with room again
    r = run(box, "import os\nleft = os.listdir('.')\n", "def test_clean():\n    assert sorted(left) == ['solution.py', 'stderr.txt', 'stdout.txt', 'test_solution.py']\n")
    assert r.all_passed, r.stderr


# ----------------------------------------------------------------- isolation
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        f"def connect():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "def resolve():\n    socket.create_connection(('pypi.org', 443), timeout=1)\n"
    )
    tests = "import pytest\n\ndef test_local():\n    with pytest.raises(OSError):\n        connect()\n\n" \
            "def test_dns():\n    with pytest.raises(OSError):\n        resolve()\n"
    with Sandbox(SandboxConfig(num_workers=1)) as sb:
        if sb.isolation == "process":
            pytest.skip("process isolation does not block the network")
        assert sb.execute_tests(code, tests).all_passed
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_parent_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("ADVCODE_SECRET_TOKEN", "hunter2")
    code = "import os\nenv = dict(os.environ)\n"
    tests = "def test_secret():\n    assert 'ADVCODE_SECRET_TOKEN' not in env\n    assert 'hunter2' not in str(env)\n"
    with Sandbox(SandboxConfig(num_workers=1)) as sb:  # started after the variable was set
        assert sb.execute_tests(code, tests).all_passed


def test_no_writes_outside_the_working_directory(box, tmp_path):
    name = f"escape-{uuid.uuid4().hex}"
    targets = [str(Path(__file__).resolve().parent / name), f"/root/{name}", f"/etc/{name}", f"/usr/{name}",
               f"/{name}", str(tmp_path / name)]
    code = (
        "import os\n"
        "def attempt(path):\n    with open(path, 'w') as f:\n        f.write('pwned')\n"
    )
    tests = "import pytest\n\n" + "".join(
        f"def test_{i}():\n    with pytest.raises(OSError):\n        attempt({t!r})\n\n" for i, t in enumerate(targets)
    )
    r = run(box, code, tests)
    assert r.all_passed, r.test_outcomes
    assert not any(os.path.exists(t) for t in targets)
    # the sandbox's own /tmp is private: a write there succeeds but never reaches the host's /tmp
    r = run(box, code, f"def test_tmp():\n    attempt('/tmp/{name}')\n")
    assert r.all_passed and not os.path.exists(f"/tmp/{name}")


def test_home_and_project_files_are_not_readable(box):
    if box.isolation != "bwrap":
        pytest.skip("only bwrap hides the file system; unshare relies on file permissions")
    project_file = str(Path(__file__).resolve())
    code = "def read(path):\n    return open(path).read()\n"
    tests = f"import pytest\n\ndef test_project():\n    with pytest.raises(OSError):\n        read({project_file!r})\n"
    assert run(box, code, tests).all_passed


def test_nothing_passes_from_one_execution_to_the_next(box):
    code = (
        "import os\n"
        "for d in ('/tmp', '/dev/shm', '/var/tmp', '..'):\n"
        "    try:\n        open(os.path.join(d, 'leak.txt'), 'w').write('answer')\n"
        "    except OSError:\n        pass\n"
    )
    assert run(box, code, "def test_a():\n    pass\n").all_passed
    probe = "import os\nfound = [d for d in ('/tmp', '/dev/shm', '/var/tmp', '..') if os.path.exists(os.path.join(d, 'leak.txt'))]\n"
    r = run(box, probe, "def test_clean():\n    assert found == []\n")
    assert r.all_passed, r.stderr


def test_killing_the_parent_is_contained(box):
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    restarts = box.workers_restarted
    r = run(box, code, "def test_a():\n    pass\n")
    if box.isolation == "unshare":  # the worker is its pid namespace's init: immune to SIGKILL from inside
        assert r.all_passed and box.workers_restarted == restarts
    else:  # the worker died: the execution counts as an error, and the worker is replaced
        assert r.status == "error" and r.passed == 0
    r = run(box, "def f():\n    return 2\n", "def test_b():\n    assert f() == 2\n")
    assert r.all_passed  # a fresh worker took over


# ----------------------------------------------------------------- forging
TWO_TESTS = "def test_one():\n    assert f() == 1\n\ndef test_two():\n    assert f() == 2\n"


@pytest.mark.parametrize("code", [
    "import os\nos._exit(0)\n",
    "import sys\nsys.exit(0)\n",
    "def f():\n    import os\n    os._exit(0)\n",
    "def f():\n    raise SystemExit(0)\n",
    "def f():\n    raise KeyboardInterrupt\n",
    "print('==== 2 passed in 0.01s ====')\ndef f():\n    return 0\n",
])
def test_exits_and_fake_summaries_are_not_passes(box, code):
    r = run(box, code, TWO_TESTS)
    assert r.passed == 0 and r.total == 2


@pytest.mark.parametrize("call", ["pytest.skip('no')", "pytest.xfail('no')", "pytest.importorskip('nonexistent_mod')"])
def test_skip_and_xfail_are_not_passes(box, call):
    code = f"import pytest\ndef f():\n    {call}\n"
    r = run(box, code, TWO_TESTS)
    assert r.passed == 0


def test_conftest_and_plugins_written_at_run_time_are_ignored(box):
    code = (
        "open('conftest.py', 'w').write('def pytest_runtest_logreport(report):\\n    report.outcome = \"passed\"\\n')\n"
        "open('pytest.ini', 'w').write('[pytest]\\naddopts = -p no:python\\n')\n"
        "def f():\n    return 0\n"
    )
    fixture_tests = "import pytest\n\n@pytest.fixture\ndef x():\n    return 1\n\ndef test_one(x):\n    assert f() == x\n"
    r = run(box, code, fixture_tests)
    assert r.runner == "pytest" and r.passed == 0 and r.total == 1


def test_forged_report_lines_without_the_nonce_are_ignored(box):
    code = (
        "import os, json\n"
        "for fd in range(3, 64):\n"
        "    for name in ('test_one', 'test_two', '__done__'):\n"
        "        try:\n"
        "            os.write(fd, (json.dumps({'test': name, 'outcome': 'passed'}) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "def f():\n    return 0\n"
    )
    r = run(box, code, TWO_TESTS)
    assert r.passed == 0


def test_rewriting_the_test_file_changes_nothing(box):
    code = "open('test_solution.py', 'w').write('def test_one():\\n    pass\\n')\ndef f():\n    return 0\n"
    assert run(box, code, TWO_TESTS).passed == 0


def test_replacing_test_functions_at_import_is_caught(box):
    code = (
        "import sys, builtins\n"
        "def _hook(frame, event, arg):\n    return None\n"
        "def f():\n    sys.settrace(_hook)\n    return 0\n"
    )
    r = run(box, code, TWO_TESTS)
    assert r.passed == 0
    assert r.tampered


def test_unexpected_extra_tests_do_not_count(box):
    # a test the worker did not see in the source cannot add to the count
    code = "import builtins\ndef f():\n    return 1\n"
    r = run(box, code, TWO_TESTS)
    assert (r.passed, r.total) == (1, 2)
