#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Drives echo_worker from Python through multiprocessing.connection.

    echo_client.py path/to/echo_worker [size ...]

Sends one message of each size (bytes of a repeating pattern), checks that
each comes back unchanged, then closes the worker's stdin and checks that it
exits with 0. Prints one line per message; exits 1 on any mismatch.
"""
import subprocess
import sys

# [docs:python-client]
import os
from multiprocessing.connection import Connection

def main(worker, sizes):
    proc = subprocess.Popen([worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # The Connections take over the pipes (each owns and closes its descriptor).
    to_worker = Connection(os.dup(proc.stdin.fileno()), readable=False)     # its stdin
    from_worker = Connection(os.dup(proc.stdout.fileno()), writable=False)  # its stdout
    proc.stdin.close()
    proc.stdout.close()
    for size in sizes:
        payload = bytes(i % 251 for i in range(size))
        to_worker.send_bytes(payload)                 # 4-byte big-endian length + bytes
        echoed = from_worker.recv_bytes()
        if echoed != payload:
            sys.exit(f"echo of {size} bytes differs")
        print(f"echoed {size} bytes")
    to_worker.close()                                 # end of stream: the worker exits...
    try:
        from_worker.recv_bytes()
        sys.exit("a message after the last echo")
    except EOFError:                                  # ...after closing its stdout
        pass
    status = proc.wait()
    if status != 0:
        sys.exit(f"worker exited with {status}")
    print("worker exited with 0")
# [docs:end]

if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]] or [0, 1, 6, 4096])
