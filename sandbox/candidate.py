"""The candidate's side of an execution: a process that holds nothing that decides or reports an outcome.

It loads the code as module `solution` from its own private folder and answers the tests' process over a
socket: which names the module exports, attribute reads and writes, calls, and operators on its objects.
Values go back as plain data (`wire.py`); any other object stays here and goes back as a handle, a number
that names it in `Server.objects`. After a call, arguments the code changed in place go back too.

Whatever runs here can only compute: it never sees a test, an expected value (beyond what a test passes as
an argument) or the verdict, and its answers are plain values the tests compare themselves. Operators that
would bring a test's value here (arithmetic, ordering, equality) are answered only between objects of this
process, and `in` is never asked here (the tests' side iterates instead). The code can read everything
that reaches this process, so the tests' side sends no more than it must (not even the names its source
uses, beyond those this side exports).

What the tests may not learn about the code is refused here, where the reference solution runs too: private
and dunder attributes (`__code__`, `__doc__`, `__globals__`, ...) are not read, nor the introspection
attributes of generators, coroutines, frames, code objects and tracebacks (`gi_frame`, `gi_code`,
`co_consts`, `f_globals`, `tb_frame`, ...); code objects, frames and tracebacks never leave as handles, and
modules leave as their name only (no handle), so nothing reachable from here leads to the source, to other
modules or to this process's internals: a test sees behaviour, not source.
"""
import linecache
import operator
import os
import sys
import traceback
import types

import wire

MAX_TEXT = 2000  # characters of an exception message sent back

OPERATORS = {
    "len": len, "iter": iter, "next": next, "bool": bool, "str": str, "repr": repr, "int": int, "float": float,
    "index": operator.index, "hash": hash, "getitem": operator.getitem,
    "setitem": operator.setitem, "delitem": operator.delitem, "isinstance": isinstance, "issubclass": issubclass,
    **{name: getattr(operator, name) for name in (
        "eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
        "neg", "pos", "abs", "invert", "and_", "or_", "xor", "lshift", "rshift")},
}
# operators answered only when every operand is an object of this process (a handle): with a test's value
# the code would see that value and could choose the result of the test's comparison
BETWEEN_HANDLES = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod",
                             "pow", "matmul", "and_", "or_", "xor", "lshift", "rshift", "isinstance", "issubclass"})
# attributes that lead from an object to code, frames and namespaces (besides every name starting with "_")
INTROSPECTION = frozenset({
    "gi_code", "gi_frame", "gi_yieldfrom", "gi_running", "gi_suspended",
    "cr_code", "cr_frame", "cr_await", "cr_origin", "cr_running", "cr_suspended",
    "ag_code", "ag_frame", "ag_await", "ag_running", "ag_suspended",
    "tb_frame", "tb_next", "tb_lasti", "tb_lineno",
    "f_back", "f_builtins", "f_code", "f_globals", "f_locals", "f_lasti", "f_lineno", "f_trace", "f_trace_lines",
    "f_trace_opcodes", "func_code", "func_globals", "im_func", "im_self",
})
INTROSPECTION_PREFIXES = ("gi_", "cr_", "ag_", "tb_", "f_", "co_")
INTROSPECTED = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType, types.CodeType, types.FrameType,
                types.TracebackType)
NEVER_HANDED_OUT = (types.CodeType, types.FrameType, types.TracebackType)
MUTABLE_TAGS = ("l", "t", "s", "d", "a")  # encodings that may hold something a call changes in place


def exception_class_info(cls: type) -> dict:
    """An exception class as data: its classes up to the first built-in one, and that one's name."""
    chain, base = [], "Exception"
    for k in cls.__mro__:
        if k.__module__ == "builtins":
            base = k.__name__
            break
        chain.append([str(k.__module__), str(k.__qualname__)])
    return {"chain": chain, "base": base}


def describe_exception(exc: BaseException, encode) -> dict:
    """An exception as data: its class, its args when they are plain, its text."""
    info = exception_class_info(type(exc))
    try:
        info["args"] = encode(tuple(exc.args))
    except BaseException:
        info["args"] = None
    try:
        info["text"] = str(exc)[:MAX_TEXT]
    except BaseException:
        info["text"] = type(exc).__name__
    return info


class Server:
    def __init__(self, module, error):
        self.module, self.error = module, error
        self.objects = {0: module}  # handle -> object; 0 is the module

    # ------------------------------------------------------------ values
    def encode(self, value):
        return wire.encode(value, self._other)

    def _other(self, value):
        """What is not plain (`wire.encode`): NumPy scalars cross as Python numbers, anything else as a handle."""
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            return self.encode(value.item())
        if isinstance(value, types.ModuleType):  # its name only: the module of that name over there, if any
            name = value.__name__
            return ["h", -1, "m", name if type(name) is str else ""]
        if isinstance(value, NEVER_HANDED_OUT):
            raise TypeError(f"a {type(value).__name__} object does not cross the sandbox boundary")
        handle = len(self.objects)
        self.objects[handle] = value
        if isinstance(value, type) and issubclass(value, BaseException):  # mirrored by a class over there
            return ["h", handle, "x", exception_class_info(value)]
        return ["h", handle, "o", None]

    def decode(self, data):
        return wire.decode(data, self._object)

    def _object(self, data):
        if data[1] < 0 or data[1] not in self.objects:  # a module's name, or a handle never handed out
            raise ValueError("not an object of this process")
        return self.objects[data[1]]

    # ------------------------------------------------------------ requests
    def answer(self, request) -> list:
        op = request[0]
        if op == "import":
            if self.error is not None:
                return ["raise", describe_exception(self.error, self.encode)]
            return ["ok", None, self.public()]
        if op == "exports":
            return ["ok", None, self.exports(request[1])]
        try:
            if op in ("getattr", "setattr", "delattr"):
                target = self.objects[request[1]]
                name, result = self._name(target, request[2]), None
                if op == "getattr":
                    result = getattr(target, name)
                elif op == "setattr":
                    setattr(target, name, self.decode(request[3]))
                else:
                    delattr(target, name)
            elif op == "call":
                args = [self.decode(a) for a in request[2]]
                kwargs = {k: self.decode(v) for k, v in request[3]}
                result = self.objects[request[1]](*args, **kwargs)
                changed = self.changed([*enumerate(request[2]), *request[3]], args + [kwargs[k] for k, _ in request[3]])
                return self.reply(result, changed)
            elif op == "op":
                name, operands = request[1], request[2]
                if name in BETWEEN_HANDLES and not all(type(a) is list and a and a[0] == "h" for a in operands):
                    raise TypeError(f"{name!r} is answered here only between objects of the candidate's")
                result = OPERATORS[name](*[self.decode(a) for a in operands])
            else:
                return ["fail", f"unknown request {op!r}"]
        except BaseException as e:  # the code's exception, SystemExit and KeyboardInterrupt included
            return ["raise", describe_exception(e, self.encode)]
        return self.reply(result)

    def reply(self, result, changed=None) -> list:
        try:
            return ["ok", self.encode(result)] + ([changed] if changed is not None else [])
        except BaseException as e:
            return ["fail", f"the value could not cross the sandbox boundary ({type(e).__name__})"]

    def changed(self, sent, args) -> list:
        """[index or keyword, new value] for each argument the call changed in place, from the (index or
        keyword, encoding) pairs it was sent as and the arguments it was called with, in the same order."""
        out = []
        for (where, raw), arg in zip(sent, args):
            if type(raw) is list and raw[0] in MUTABLE_TAGS:
                now = self.encode(arg)
                if now != raw:
                    out.append([where, now])
        return out

    def public(self) -> list[str]:
        """The names `from solution import *` would bind (the tests' side asks for those it uses)."""
        namespace = vars(self.module)
        public = namespace.get("__all__")
        if not (isinstance(public, (list, tuple)) and all(type(n) is str for n in public)):
            public = [n for n in namespace if type(n) is str and not n.startswith("_")]
        return sorted({n for n in public if n in namespace})

    def exports(self, names) -> list:
        """[name, value] for each of `names` that `from solution import *` would bind."""
        namespace = vars(self.module)
        public = set(self.public())
        out = []
        for name in names:
            if type(name) is str and name in public:
                try:
                    out.append([name, self.encode(namespace[name])])
                except BaseException:
                    pass  # a value that cannot cross is simply not exported
        return out

    def _name(self, target, name) -> str:
        """`name`, if a test may read, write or delete it on `target`; else AttributeError. Dunder names and
        introspection attributes never; other private names on the module only (its top-level `_helper`)."""
        if (type(name) is not str or (name.startswith("__") and name.endswith("__")) or name in INTROSPECTION
                or (name.startswith("_") and target is not self.module)
                or (isinstance(target, INTROSPECTED) and name.startswith(INTROSPECTION_PREFIXES))):
            raise AttributeError(f"{name!r} is not readable across the sandbox boundary")
        return name

    def serve(self, sock):
        reader = wire.FrameReader(sock)
        while True:
            try:
                request = reader.read()
            except (OSError, ValueError, RecursionError):
                return
            if request is None:
                return
            if type(request) is not list or not request:
                reply = ["fail", "malformed request"]
            else:
                try:
                    reply = self.answer(request)
                except BaseException as e:  # a malformed request: wrong types, unknown handle
                    reply = ["fail", f"malformed request ({type(e).__name__})"]
            wire.flush_output()  # output reaches the host even if we are killed next
            try:
                wire.send_frame(sock, reply)
            except (OSError, ValueError, TypeError, RecursionError):
                try:
                    wire.send_frame(sock, ["fail", "the reply could not be sent"])
                except (OSError, ValueError):
                    return


def main(host, peer, limits):
    request = wire.FrameReader(host).read()
    host.close()
    code = request["code"]
    sys.argv = ["solution.py"]
    module, error = types.ModuleType("solution"), None
    # bound before the code runs, so that replacing `Server` in this module changes nothing here (the code
    # can still read whatever reaches this process: the tests' side sends no more than it must)
    server = Server(module, None)
    serve = server.serve
    module.__file__ = os.path.abspath("solution.py")
    sys.modules["solution"] = module
    # tracebacks and `inspect` find the source here; no file is written (that alone cost ~0.5 ms, measured)
    linecache.cache[module.__file__] = (len(code), None, code.splitlines(True), module.__file__)
    try:
        exec(compile(code, module.__file__, "exec"), vars(module))
    except BaseException as e:  # SystemExit too: the import failed
        error = e
        sys.modules.pop("solution", None)
        traceback.print_exc()
    server.error = error
    serve(peer)
