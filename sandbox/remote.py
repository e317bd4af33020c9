"""The tests' view of the candidate's module, in the tests' process: `import solution` gives a module whose
names stand for objects in the candidate's process (`candidate.py`), reached over a socket.

What a test gets back from the candidate's code is always a plain value built here (`wire.py`), or a
`Remote` that names an object over there, so no object of the candidate's takes part in a comparison:
- plain values compare as themselves; a `Remote` is never equal to a plain value (the candidate's `__eq__`
  is asked only when both sides are its objects);
- operators never send a test's value to the candidate's code behind the test's back: arithmetic and
  ordering on a `Remote` work only with another `Remote` (with a plain value they raise TypeError, so
  `abs(f(x) - expected) < eps` fails for an object that is not a number instead of letting its `__sub__`,
  which would see `expected`, decide), and `expected in f(x)` iterates the object here and compares each
  item here (its `__contains__` is never asked);
- functions and classes are called remotely, with plain values or `Remote`s as arguments (anything else,
  a lambda for instance, raises TypeError); arguments the call changed in place are changed here too;
- an exception raised over there is raised here as the same built-in type, or as a class of the same name
  derived from it for the candidate's own exception classes (`pytest.raises(solution.MyError)` works);
  never as a class of pytest's or of the sandbox's, never as one outside `Exception` (those derive from
  `Escaped`: `SystemExit` and `KeyboardInterrupt` fail the test, they do not end the run), and
  `StopIteration` ends an iteration only as the answer to `next` (elsewhere it is a `RuntimeError`);
- a process that died or broke the protocol raises `BoundaryError`, which is not an `Exception`, so that
  `pytest.raises(Exception)` cannot mistake a crash for the error it expects.

`from solution import *` binds only names the test source uses (identifiers of its syntax tree, never its
strings or comments) and its module level does not bind itself, never a builtin's name and never a
`test*`/`Test*` name: the candidate can neither shadow `sum`, `abs` or the test's own imports, nor add or
replace a test. The candidate's process first says which names it exports; only those of them the test
uses are asked for, so it learns nothing of the test source it did not export. Explicit imports (`from
solution import helper`) reach any name. A module of the candidate's (`solution.math`) is this process's
module of that name when it has one loaded, else a placeholder: no module object of the candidate's
process is reachable from here.
"""
import ast
import builtins
import importlib.abc
import importlib.util
import keyword
import sys
import threading
import traceback
import types

import wire


class BoundaryError(BaseException):
    """The candidate's process ended, broke the protocol, or returned something that cannot cross."""


class Escaped(BaseException):
    """The base here of every exception the candidate's code raised outside `Exception` (`SystemExit`,
    `KeyboardInterrupt`, `GeneratorExit`, its own `BaseException` subclasses): it fails the test that
    called, as any error does, but neither stops the tests' run nor passes for what the test expects."""


class Channel:
    """Requests to the candidate's process, one at a time (tests may use threads)."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = wire.FrameReader(sock)
        self.lock = threading.Lock()
        self.broken = ""  # why the channel can no longer be used
        self.violated = False  # the candidate's side answered out of protocol
        self.mirrors: dict[tuple, type] = {}  # (module, qualname, base) -> exception class made here

    def request(self, message: list):
        with self.lock:
            if self.broken:
                raise BoundaryError(self.broken)
            try:
                wire.send_frame(self.sock, message)
                reply = self.reader.read()
            except wire.FrameTooLarge as e:
                self.broken = str(e)
                raise BoundaryError(self.broken) from None
            except ValueError as e:
                raise self._violation(f"unreadable reply ({e})") from None
            except RecursionError:  # JSON nested deeper than a reply needs
                raise self._violation("unreadable reply (nested too deeply)") from None
            except OSError:
                reply = None
            if reply is None:
                self.broken = "the candidate's process ended"
                raise BoundaryError(self.broken)
        try:
            if type(reply) is list and reply and reply[0] == "ok" and len(reply) in (2, 3):
                return [self.decode(reply[1])] + reply[2:]
            if type(reply) is list and len(reply) == 2 and reply[0] == "raise" and type(reply[1]) is dict:
                exc = self.exception(reply[1], message)
            elif type(reply) is list and len(reply) == 2 and reply[0] == "fail":
                raise BoundaryError(str(reply[1])[:500])
            else:
                raise self._violation("malformed reply")
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise self._violation(f"malformed reply ({type(e).__name__})") from None
        raise exc

    def _violation(self, why: str) -> BoundaryError:
        self.violated = True
        self.broken = f"the candidate's process broke the protocol: {why}"
        return BoundaryError(self.broken)

    # ------------------------------------------------------------ values
    def encode(self, value):
        return wire.encode(value, _encode_other)

    def decode(self, data):
        return wire.decode(data, self._handle)

    def _handle(self, data):
        _, handle, kind, extra = data
        if kind == "x":
            return self.exception_class(extra["chain"], extra["base"])
        if kind == "m":  # the candidate's side never hands out its modules
            return sys.modules.get(extra) if type(extra) is str and extra in sys.modules else _unavailable(str(extra))
        return Remote(self, handle)

    def exception_class(self, chain, base_name) -> type:
        """A class here for an exception class over there: a built-in one derived from `Exception` is itself;
        a standard-library one derived from `Exception` that this process has loaded is that class; any
        other is made here once, under the same name, derived from the nearest of those (or from `Escaped`,
        for classes outside `Exception`). So no class of pytest's, of the sandbox's or of the tests' own
        crosses as itself (`Exit`, `Skipped`, `Failed` would stop or skip the run)."""
        base = getattr(builtins, str(base_name), None)
        if not (isinstance(base, type) and issubclass(base, BaseException)):
            base = Exception
        if not issubclass(base, Exception):
            base = self._mirror("builtins", base.__name__, Escaped)
        for module, qualname in reversed(chain):
            module, qualname = str(module), str(qualname)
            known = sys.modules.get(module) if module.split(".")[0] in STDLIB and module != "solution" else None
            for part in qualname.split(".") if known else ():
                known = getattr(known, part, None)
            if isinstance(known, type) and issubclass(known, base) and issubclass(known, Exception):
                base = known
                continue
            base = self._mirror(module, qualname, base)
        return base

    def _mirror(self, module: str, qualname: str, base: type) -> type:
        key = (module, qualname, base)
        if key not in self.mirrors:
            name = qualname.rsplit(".", 1)[-1]
            self.mirrors[key] = type(name, (base,), {"__module__": module, "__qualname__": qualname})
        return self.mirrors[key]

    def exception(self, info: dict, request: list) -> BaseException:
        """The exception a reply describes, built here from plain values. `StopIteration` (and
        `StopAsyncIteration`) ends an iteration only as the answer to a `next` request; anywhere else it
        arrives as `RuntimeError`, as Python makes of it inside a generator, so that `map`, `zip`, `all` or
        a generator in a test cannot mistake it for the end of their own iteration."""
        cls = self.exception_class(info["chain"], info["base"])
        if issubclass(cls, (StopIteration, StopAsyncIteration)) and request[:2] != ["op", "next"]:
            return RuntimeError(f"the candidate's code raised {cls.__name__}: {str(info.get('text', ''))[:500]}")
        text = str(info["text"])
        args = self.decode(info["args"]) if info.get("args") is not None else (text,)
        try:
            exc = cls(*args)
            str(exc)  # pytest and the runner describe it: arguments that break that do not cross
            traceback.format_exception_only(cls, exc)
            return exc
        except Exception:  # (a SyntaxError's malformed details, an integer too long to print): its text only,
            exc = BaseException.__new__(cls)  # without running a constructor that could refuse that too
            exc.args = (text,)
            if isinstance(exc, SyntaxError):
                exc.msg = text
            return exc

    # ------------------------------------------------------------ operations
    def call(self, handle, args, kwargs):
        if any(type(key) is not str for key in kwargs):
            raise TypeError("keyword names must be strings")
        sent_args = [self.encode(a) for a in args]
        sent_kwargs = [[k, self.encode(v)] for k, v in kwargs.items()]
        reply = self.request(["call", handle, sent_args, sent_kwargs])
        value, changed = reply[0], reply[1] if len(reply) > 1 else []
        try:
            for where, new in changed:
                target = args[where] if type(where) is int else kwargs[where]
                _update(target, self.decode(new))
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
            raise self._violation(f"malformed change of an argument ({type(e).__name__})") from None
        return value

    def op(self, name: str, *operands):
        return self.request(["op", name, [self.encode(x) for x in operands]])[0]


def _unavailable(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def __getattr__(attr):
        raise ImportError(f"module {name!r} of the solution is not available in the tests' process")

    module.__getattr__ = __getattr__
    return module


def _encode_other(value):
    if isinstance(value, Remote):
        return ["h", object.__getattribute__(value, "_handle"), "", None]
    raise TypeError(f"a {type(value).__name__} cannot be passed to the candidate's code: only plain values "
                    "(and the candidate's own objects) cross the sandbox boundary")


def _update(old, new):
    """Make `old` equal to `new` in place, keeping the identity of nested containers where the shapes agree."""
    if type(old) is list and type(new) is list:
        for i in range(min(len(old), len(new))):
            old[i] = _merged(old[i], new[i])
        del old[len(new):]
        old.extend(new[len(old):])
    elif type(old) is dict and type(new) is dict:
        for key in [k for k in old if k not in new]:
            del old[key]
        for key, value in new.items():
            old[key] = _merged(old[key], value) if key in old else value
    elif type(old) is set and type(new) is set:
        old.clear()
        old.update(new)
    elif type(old) is bytearray and type(new) is bytearray:
        old[:] = new
    elif type(old) is tuple and type(new) is tuple and len(old) == len(new):
        for a, b in zip(old, new):
            _merged(a, b)


def _merged(old, new):
    if type(old) is type(new) and type(old) in (list, dict, set, bytearray):
        _update(old, new)
        return old
    return new


# ---------------------------------------------------------------- remote objects
class Remote:
    """An object that stays in the candidate's process. Public attributes, calls, iteration, indexing, `len`,
    `str`, `repr`, `bool`, `hash`, and arithmetic and comparisons with another `Remote` are forwarded.
    Equality with anything else falls back to identity, so it is False; arithmetic and ordering with
    anything else raise TypeError; `in` iterates here (see the module's docstring)."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel, handle):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)  # private and dunder names are not read across the boundary
        return self._channel.request(["getattr", self._handle, name])[0]

    def __setattr__(self, name, value):
        if name.startswith("_"):
            raise AttributeError(name)
        self._channel.request(["setattr", self._handle, name, self._channel.encode(value)])

    def __delattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._channel.request(["delattr", self._handle, name])

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._handle, args, kwargs)

    def __repr__(self):
        return self._channel.op("repr", self)

    def __str__(self):
        return self._channel.op("str", self)

    def __hash__(self):
        return self._channel.op("hash", self)

    def __instancecheck__(self, obj):
        return isinstance(obj, Remote) and self._channel.op("isinstance", obj, self)

    def __subclasscheck__(self, cls):
        return isinstance(cls, Remote) and self._channel.op("issubclass", cls, self)


def _unary(name):
    return lambda self: self._channel.op(name, self)


def _binary(name):
    return lambda self, other: self._channel.op(name, self, other)


def _between_remotes(name, reflected=False):
    """An operator forwarded only when both operands are the candidate's objects: with a test's value it
    would let the candidate's code see that value and choose the result (`abs(f(x) - expected) < eps`)."""
    def method(self, other):
        if not isinstance(other, Remote):
            raise TypeError(f"{name!r} between an object of the candidate's (not a plain value) and a value of the "
                            "test's is not forwarded across the sandbox boundary: convert it first (float(), list())")
        return self._channel.op(name, other, self) if reflected else self._channel.op(name, self, other)
    return method


def _comparison(name):
    def method(self, other):
        return self._channel.op(name, self, other) if isinstance(other, Remote) else NotImplemented
    return method


for _name in ("len", "iter", "next", "bool", "int", "float", "index", "neg", "pos", "abs", "invert"):
    setattr(Remote, f"__{_name}__", _unary(_name))
for _name in ("getitem", "delitem"):  # the key is the test's, the item the candidate's answer
    setattr(Remote, f"__{_name}__", _binary(_name))
Remote.__setitem__ = lambda self, key, value: self._channel.op("setitem", self, key, value)
# no __contains__: `x in remote` falls back to __iter__, and each item is compared with x here
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "lshift", "rshift"):
    setattr(Remote, f"__{_name}__", _between_remotes(_name))
    setattr(Remote, f"__r{_name}__", _between_remotes(_name, reflected=True))
for _name, _op in (("and", "and_"), ("or", "or_"), ("xor", "xor")):
    setattr(Remote, f"__{_name}__", _between_remotes(_op))
    setattr(Remote, f"__r{_name}__", _between_remotes(_op, reflected=True))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Remote, f"__{_name}__", _comparison(_name))
del _name, _op


# ---------------------------------------------------------------- `import solution`
BUILTINS = frozenset(dir(builtins)) | frozenset(keyword.kwlist)
STDLIB = frozenset(sys.stdlib_module_names)


def star_names(tree: ast.Module) -> list[str]:
    """Names `from solution import *` may bind for this test module: the names it reads or writes as
    variables anywhere (`ast.Name`, `global`/`nonlocal`; never a string, a comment or an attribute), except
    those its module level binds itself (an import, a def, an assignment: the candidate may not shadow them,
    before or after), builtins' names and test names."""
    mentioned = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            mentioned.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            mentioned.update(node.names)
    bound, todo = set(), list(tree.body)
    while todo:  # module-level statements, into if/for/while/try/with blocks but not into defs or classes
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                todo.append(child)
            elif isinstance(child, ast.alias):
                bound.add((child.asname or child.name).split(".")[0])
            elif isinstance(child, ast.excepthandler):
                bound.add(child.name or "")
                todo.extend(child.body)
            else:
                bound.update(n.id for n in ast.walk(child) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load))
    names = mentioned - bound - BUILTINS
    return sorted(n for n in names if not n.lower().startswith("test"))


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, channel, names):
        self.channel, self.names = channel, names

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == "solution" else None

    def exec_module(self, module):
        channel = self.channel
        try:
            public = channel.request(["import"])[1]  # the names it exports; nothing of ours is sent
            if type(public) is not list:
                raise channel._violation("malformed list of exported names")
            public = {n for n in public if type(n) is str}
            wanted = [n for n in self.names if n in public]
            exports = channel.request(["exports", wanted])[1] if wanted else []
        except BoundaryError as e:
            raise ImportError(f"the solution could not be imported: {e}") from None
        except BaseException as e:
            try:
                text = f"{type(e).__name__}: {e}"
            except BaseException:  # an exception whose text cannot be made
                text = type(e).__name__
            raise ImportError(f"the solution failed to import: {text}") from None
        try:
            values = {str(name): channel.decode(value) for name, value in exports}
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise ImportError(str(channel._violation(f"malformed exports ({type(e).__name__})"))) from None
        chosen = set(wanted)
        values = {n: v for n, v in values.items() if n in chosen}
        module.__dict__.update(values)
        module.__all__ = sorted(values)

        def __getattr__(name):
            if name.startswith("__") or name.startswith("_pytest"):
                raise AttributeError(name)
            return channel.request(["getattr", 0, name])[0]

        module.__getattr__ = __getattr__


def install(sock, names: list[str]) -> Channel:
    """Make `import solution` reach the candidate's process through `sock`."""
    channel = Channel(sock)
    sys.meta_path.insert(0, _Finder(channel, names))
    return channel
