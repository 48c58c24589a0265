# SPDX-License-Identifier: BSL-1.0
# A pool worker in Python with nothing but multiprocessing.connection:
# requests and replies are 4-byte native ints (coropipe's codec for int).
import sys
from multiprocessing.connection import Connection

# [docs:python-worker]
def main():
    rx, tx = Connection(0), Connection(1)
    while True:
        try:
            data = rx.recv_bytes()
        except EOFError:
            return 0
        x = int.from_bytes(data, sys.byteorder, signed=True)
        if x == 1000000:
            import os
            os.abort()
        tx.send_bytes((x * 2).to_bytes(4, sys.byteorder, signed=True))
# [docs:end]

if __name__ == "__main__":
    sys.exit(main())
