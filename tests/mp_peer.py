# SPDX-License-Identifier: BSL-1.0
"""Python's multiprocessing.connection as the peer of coropipe's socket tests.

  mp_peer.py client ADDRESS KEY SIZES     Client: send each size, expect it echoed
  mp_peer.py clients ADDRESS KEY COUNT    COUNT Clients open at once, one message each
  mp_peer.py listener ADDRESS KEY         Listener: print the address, echo one client
  mp_peer.py send_handle ADDRESS          Client: send a pipe's read end, write to it
  mp_peer.py recv_handle ADDRESS          Client: receive a descriptor, print what it reads

ADDRESS is a Python literal ('/path', '\\0name', ('127.0.0.1', 0)); KEY is
hex bytes, or '-' for no authkey; SIZES is comma-separated. Exit status 3
on an AuthenticationError.
"""
import ast
import os
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener


def key(arg):
    return None if arg == '-' else bytes.fromhex(arg)


def payload(n, seed):
    block = bytes((i * 7 + seed) & 0xff for i in range(256))
    return (block * (n // 256 + 1))[:n]


def printed(address):
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
    if isinstance(address, bytes):
        address = address.decode()
    return '@' + address[1:] if address.startswith('\0') else address


def main():
    mode, address = sys.argv[1], ast.literal_eval(sys.argv[2])
    try:
        if mode == 'client':
            sizes = [int(s) for s in sys.argv[4].split(',') if s]
            with Client(address, authkey=key(sys.argv[3])) as c:
                for i, n in enumerate(sizes):
                    p = payload(n, i)
                    c.send_bytes(p)
                    assert c.recv_bytes() == p, f'echo of {n} bytes differs'
                print('ok', len(sizes), flush=True)
        elif mode == 'clients':
            conns = [Client(address, authkey=key(sys.argv[3])) for _ in range(int(sys.argv[4]))]
            for i, c in enumerate(conns):
                c.send_bytes(b'client %d' % i)
            for i, c in enumerate(conns):
                assert c.recv_bytes() == b'client %d' % i
                c.close()
            print('ok', len(conns), flush=True)
        elif mode == 'listener':
            with Listener(address, authkey=key(sys.argv[3])) as l:
                print(printed(l.address), flush=True)
                with l.accept() as c:
                    n = 0
                    while True:
                        try:
                            m = c.recv_bytes()
                        except EOFError:
                            break
                        c.send_bytes(m)
                        n += 1
                print('done', n, flush=True)
        elif mode == 'send_handle':
            from multiprocessing.reduction import send_handle
            r, w = os.pipe()
            with Client(address) as c:
                send_handle(c, r, os.getpid())
                os.close(r)
                os.write(w, b'through the pipe from Python')
                os.close(w)
                c.recv_bytes()  # the other side says it has read
            print('ok', flush=True)
        elif mode == 'recv_handle':
            from multiprocessing.reduction import recv_handle
            with Client(address) as c:
                fd = recv_handle(c)
                data = b''
                while chunk := os.read(fd, 4096):
                    data += chunk
                os.close(fd)
                c.send_bytes(b'read')
            print(data.decode(), flush=True)
        else:
            sys.exit(f'unknown mode {mode}')
    except AuthenticationError as e:
        print('auth-failed:', e, file=sys.stderr, flush=True)
        sys.exit(3)


main()
