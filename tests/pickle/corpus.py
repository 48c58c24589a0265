# SPDX-License-Identifier: BSL-1.0
"""The pickle test's Python side.

  corpus.py dump      one line per (value, protocol): name proto hex(pickle) hex(repr)
                      (protocol "send" is what Connection.send writes)
  corpus.py check     reads lines "name hex(pickle)" from stdin, loads each and
                      compares with the corpus value exactly; prints "ok name" or
                      "FAIL name: ..." per line
  corpus.py refused   one line per unsupported object: name hex(pickle)
"""
import math
import pickle
import sys
from multiprocessing.reduction import ForkingPickler


def nested(depth):
    v = []
    for _ in range(depth - 1):
        v = [v]
    return v


shared = [1, "two", 3.0]
CORPUS = {
    "none": None, "true": True, "false": False,
    "int_0": 0, "int_1": 1, "int_m1": -1,
    "int_255": 255, "int_256": 256, "int_65535": 65535, "int_65536": 65536,
    "int_2p31": 2**31, "int_m2p31": -2**31, "int_2p31m1": 2**31 - 1, "int_m2p31m1": -2**31 - 1,
    "int_2p63": 2**63, "int_m2p63": -2**63, "int_2p63m1": 2**63 - 1, "int_m2p63m1": -2**63 - 1,
    "int_2p64": 2**64, "int_m2p64": -2**64, "int_2p64m1": 2**64 - 1,
    "int_2p1000": 2**1000 + 12345, "int_m2p1000": -(2**1000) - 1, "int_m2p1000x": -(2**1000),
    "int_2p4000": 3**2500,
    "float_0": 0.0, "float_m0": -0.0, "float_nan": math.nan, "float_inf": math.inf, "float_minf": -math.inf,
    "float_half": 0.5, "float_third": 1 / 3, "float_big": 1e300, "float_1e16": 1e16, "float_1e15": 1e15,
    "float_small": 1e-5, "float_0001": 0.0001, "float_sub": 5e-324, "float_sub2": 2.2250738585072e-310,
    "float_max": 1.7976931348623157e308, "float_m123": -123.456,
    "str_empty": "", "str_ascii": "Spam 0", "str_nul": "a\0b", "str_quotes": "it's \"q\"", "str_sq": "it's",
    "str_ctrl": "\t\n\r\x1b\x7f\x80\xa0\xad", "str_latin": "caf\xe9", "str_bmp": "\u20ac\u2028\ufeff",
    "str_nonbmp": "\U0001F600 \U00010000 \U0010FFFF", "str_backslash": "a\\u0041\\", "str_long": "x" * 300,
    "str_70k": "y" * 70000,
    "bytes_empty": b"", "bytes_small": b"\x00\x01'\"\\\xff", "bytes_300": bytes(range(256)) + b"z" * 44,
    "bytearray_empty": bytearray(), "bytearray": bytearray(b"ab\x00\xff"),
    "tuple_empty": (), "tuple_1": (1,), "tuple_2": (1, "a"), "tuple_3": (1, 2, 3), "tuple_5": (1, 2, 3, 4, (5,)),
    "list_empty": [], "list": [1, [2, [3, []]], "x"], "list_1500": list(range(1500)),
    "dict_empty": {}, "dict": {"a": 1, "b": [1, 2], "c": {"d": None}},
    "dict_tuple_keys": {(1, 2): "a", (3, "x", (4,)): "b", frozenset({1}): "c", 5: 6, 7.5: 8, None: 9, b"k": 10},
    "dict_big": {f"key{i}": i for i in range(100)},
    "set_empty": set(), "set": {1, 2, 3}, "set_mixed": {(1, 2), "a"},
    "frozenset_empty": frozenset(), "frozenset": frozenset({4, 5}),
    "shared": [shared, shared, {"again": shared}],
    "nested_200": nested(200),
    "nested_dicts": {"a": {"b": {"c": {"d": [(), [], {}, set(), frozenset()]}}}},
    "message": {f"k{i}": (i if i % 3 == 0 else (i * 0.5 if i % 3 == 1 else f"s{i}")) for i in range(10)},
}


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items()) and \
            all(same(x, y) for x, y in zip(a.keys(), b.keys()))
    return a == b


def send_bytes(obj):
    return bytes(ForkingPickler.dumps(obj))


def dump():
    out = []
    for name, value in CORPUS.items():
        for proto in list(range(pickle.HIGHEST_PROTOCOL + 1)) + ["send"]:
            data = send_bytes(value) if proto == "send" else pickle.dumps(value, protocol=proto)
            out.append(f"{name} {proto} {data.hex()} {repr(value).encode('utf-8').hex()}")
    print("\n".join(out))


def check():
    bad = 0
    for line in sys.stdin:
        name, data = line.split()
        got = pickle.loads(bytes.fromhex(data))
        want = CORPUS[name]
        if same(got, want):
            if name == "shared" and not (got[0] is got[1] is got[2]["again"]):
                print(f"FAIL {name}: sharing lost")
                bad += 1
            else:
                print(f"ok {name}")
        else:
            print(f"FAIL {name}: {got!r:.200}")
            bad += 1
    sys.exit(1 if bad else 0)


class Thing:
    pass


def refused():
    import datetime
    import os

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch /tmp/coropipe-pickle-pwned",))

    items = {
        "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "instance": Thing(),
        "exploit": Exploit(),
        "complex": 1 + 2j,
    }
    for name, value in items.items():
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            print(f"{name} {proto} {pickle.dumps(value, protocol=proto).hex()}")
    # A lambda cannot be pickled by reference to code; what a malicious peer
    # would write instead is a reference to a builtin callable:
    print(f"lambda 4 {pickle.dumps(eval, protocol=4).hex()}")


if __name__ == "__main__":
    {"dump": dump, "check": check, "refused": refused}[sys.argv[1]]()
