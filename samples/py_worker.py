# SPDX-License-Identifier: BSL-1.0
"""A Python worker for samples/py_dicts.cpp, written as any Python program
using multiprocessing.connection is: it receives dicts on stdin and sends
dicts back on stdout, with recv() and send() (pickles), and knows nothing of
C++. It stops at the end of its input.

    python3 py_worker.py    (started by py_dicts)
"""
# [docs:py-worker]
from multiprocessing.connection import Connection

inbox, outbox = Connection(0), Connection(1)   # stdin, stdout
while True:
    try:
        job = inbox.recv()                      # a dict, from C++
    except EOFError:
        break                                   # the C++ side closed our stdin
    text = job["text"]
    outbox.send({"id": job["id"], "words": len(text.split()), "shout": text.upper(),
                 "letters": sorted(set(text.replace(" ", "")))})
# [docs:end]
