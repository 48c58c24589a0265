# SPDX-License-Identifier: BSL-1.0
"""Writes the pickle fuzz target's seed corpus, fuzz/corpus/pickle/: the test
corpus's values (tests/pickle/corpus.py) in three protocols, plus edge cases
(refused, or costly if the decoder were naive).

    python3 fuzz/make_pickle_corpus.py
"""
import os
import pickle
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "pickle"))
import corpus  # noqa: E402

out = os.path.join(here, "corpus", "pickle")
os.makedirs(out, exist_ok=True)
for old in os.listdir(out):
    os.remove(os.path.join(out, old))

count = 0
for name, value in corpus.CORPUS.items():
    # Protocol 0 (text), 2 (binary, globals for bytes and sets), 5 (frames,
    # bytearray8; 4 is what Connection.send writes, between them).
    for proto in (0, 2, 5):
        data = pickle.dumps(value, protocol=proto)
        if len(data) > 4096:
            continue
        with open(os.path.join(out, f"{name}-{proto}"), "wb") as f:
            f.write(data)
        count += 1

refused = {
    "global-os-system": b"cos\nsystem\n(S'echo'\ntR.",
    "stack-global-eval": b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.",
    "recursive-list": b"]\x94h\x00a.",
    "unhashable-key": b"}]K\x01s.",
    "deep": b"]" * 1100 + b"a" * 1099 + b".",
    "memo-chain": b"]q\x00" + b"]h\x00aq\x000" * 1100 + b"0h\x00.",
    "reduce-set": b"c__builtin__\nset\n(lp0\nI1\naI2\natR.",
    "codecs-bytes": b"c_codecs\nencode\n(Vab\xe9\nVlatin1\ntR.",
    "dag-tuple-key": b"}K\x01" + b"q\x00h\x00\x86" * 200 + b"Ns.",
    "sparse-memo": b"K\x01r\xff\xff\xff\x7fj\xff\xff\xff\x7f\x86.",
}
for name, data in refused.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    count += 1
print(f"wrote {count} inputs to {out}")
