"""What crosses a sandbox boundary: length-prefixed JSON frames (4-byte big-endian length, then UTF-8 JSON),
and plain values in a tagged encoding.

Plain values are None, bool, int, float, str and bytes, bytearray and complex, and lists, tuples, dicts, sets
and frozensets of them. JSON carries None, booleans, numbers and strings as themselves; every other value is
a list whose first element is a tag:

    ["l", [...]] list   ["t", [...]] tuple   ["s", [...]] set   ["f", [...]] frozenset   ["d", [[k, v], ...]] dict
    ["b", "base64"] bytes   ["a", "base64"] bytearray   ["c", re, im] complex   ["i", "hex"] large int
    ["h", id, kind, extra] a handle: an object that stays in the process that owns it

The standard library's JSON parser builds only dicts, lists, strings, numbers, booleans and None, and
`decode` builds only the types above (handles through the caller's function), so nothing received is
unpickled or evaluated. Used by the host, the candidate's process and the tests' process alike; imports only
the standard library.
"""
import binascii
import json
import struct
import sys

MAX_FRAME = 64 << 20  # a larger frame ends the conversation
# the tests' process reports one JSON line per test to the host: {"t": test id, "o": outcome, "m": message}
PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
OUTCOMES = (PASSED, FAILED, ERROR, SKIPPED)
DONE = "__done__"  # its last line's test id: every report is in
COLLECTED = "__collected__"  # its first line's test id, before any test runs: {"t": COLLECTED, "c": {test: cases}}
PROTOCOL = "__protocol__"  # the test id of its report that the candidate's process broke the protocol (tampered)
PLAIN_BASES = (int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)  # their subclasses cross as them
_SMALL_INT = 1 << 63  # beyond this, ints travel as hex (decimal conversion of huge ints is capped at 4300 digits)
_SEQUENCES = {list: "l", tuple: "t", set: "s", frozenset: "f"}
_BUILD = {"l": list, "t": tuple, "s": set, "f": frozenset}


def flush_output() -> None:
    """Flush this process's stdout and stderr (to the host's memory files) before a reply the host may
    answer by killing us; code that broke the streams does not stop the reply."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


# ---------------------------------------------------------------- frames
def send_frame(sock, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


class FrameTooLarge(ValueError):
    pass


class FrameReader:
    """Frames from a socket, read in large chunks (one system call for most frames)."""

    def __init__(self, sock, limit: int = MAX_FRAME):
        self.sock, self.limit, self.buffer = sock, limit, bytearray()

    def read(self):
        """The next frame's object; None at end of stream. ValueError on a frame too large or not JSON."""
        while True:
            if len(self.buffer) >= 4:
                (size,) = struct.unpack_from(">I", self.buffer)
                if size > self.limit:
                    raise FrameTooLarge(f"a value of {size} bytes exceeds the limit of {self.limit}")
                if len(self.buffer) >= 4 + size:
                    body = bytes(self.buffer[4:4 + size])
                    del self.buffer[:4 + size]
                    return json.loads(body)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


# ---------------------------------------------------------------- values
def encode(value, other):
    """`value` in the tagged form. A subclass of a plain type crosses as that type (a namedtuple as a tuple, an
    IntEnum as an int, a Counter as a dict); a value of any other type is passed to `other`, which returns its
    encoding (a handle, or the encoding of a plain equivalent) or raises."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -_SMALL_INT < value < _SMALL_INT else ["i", format(value, "x")]
    if kind in _SEQUENCES:
        return [_SEQUENCES[kind], [encode(v, other) for v in value]]
    if kind is dict:
        return ["d", [[encode(k, other), encode(v, other)] for k, v in value.items()]]
    if kind is bytes or kind is bytearray:
        return ["b" if kind is bytes else "a", binascii.b2a_base64(value, newline=False).decode()]
    if kind is complex:
        return ["c", value.real, value.imag]
    for base in PLAIN_BASES:
        if isinstance(value, base):
            return encode(base(value), other)
    return other(value)


def decode(data, handle):
    """The value `data` encodes; `handle(data)` builds what a handle stands for. ValueError (or TypeError)
    on anything that is not a well-formed encoding."""
    kind = type(data)
    if data is None or kind is bool or kind is str or kind is int or kind is float:
        return data
    if kind is not list or not data or type(data[0]) is not str:
        raise ValueError("not an encoded value")
    tag = data[0]
    if tag in _BUILD and len(data) == 2 and type(data[1]) is list:
        return _BUILD[tag](decode(v, handle) for v in data[1])
    if tag == "d" and len(data) == 2 and type(data[1]) is list:
        out = {}
        for pair in data[1]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict entry")
            out[decode(pair[0], handle)] = decode(pair[1], handle)
        return out
    if tag in ("b", "a") and len(data) == 2 and type(data[1]) is str:
        raw = binascii.a2b_base64(data[1].encode("ascii"))
        return raw if tag == "b" else bytearray(raw)
    if tag == "c" and len(data) == 3 and all(type(x) in (int, float) for x in data[1:]):
        return complex(data[1], data[2])
    if tag == "i" and len(data) == 2 and type(data[1]) is str:
        return int(data[1], 16)
    if tag == "h" and len(data) == 4 and type(data[1]) is int:
        return handle(data)
    raise ValueError(f"unknown tag {tag!r}")
