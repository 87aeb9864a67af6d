#!/usr/bin/env python3
"""A minimal blocking-splice forwarder: bench/bulk-ns's `floor` path. Needs Python >= 3.10.

    splice-floor.py LISTEN_PORT BACKEND_PORT...

Accepts on 127.0.0.1:LISTEN_PORT, connects each client to the next backend on 127.0.0.1 in
turn, and moves bytes each way with a thread that splices, blocking, through a 1 MiB pipe
(Fulcrum's size): no event loop, no readiness, no session table, no limits. It is about the
least a proxy that ends the client's TCP connection and opens its own to a backend can do, so
a proxy's bulk figure beside this one shows how much of its gap to direct comes with the
second TCP hop on this machine. A yardstick, not a proxy: no timeouts, and an error ends the
connection.
"""
import fcntl
import os
import socket
import sys
import threading

PIPE_SIZE = 1 << 20


def pump(src, dst):
    """Splices src into dst until src's end, then half-closes dst. On an error both sockets are
    shut down, so the other direction's blocking splice returns too."""
    try:
        r, w = os.pipe()
    except OSError:
        abort(src, dst)
        return
    try:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default size only costs speed, as in Fulcrum
        while True:
            n = os.splice(src.fileno(), w, PIPE_SIZE)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        abort(src, dst)
    finally:
        os.close(r)
        os.close(w)


def abort(*sockets):
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(client, backend_port):
    try:
        backend = socket.create_connection(("127.0.0.1", backend_port))
    except OSError:
        client.close()
        return
    with client, backend:
        for s in (client, backend):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = threading.Thread(target=pump, args=(client, backend), daemon=True)
        up.start()
        pump(backend, client)
        up.join()


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: splice-floor.py LISTEN_PORT BACKEND_PORT...")
    port, backends = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    turn = 0
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, backends[turn % len(backends)]), daemon=True).start()
        turn += 1


if __name__ == "__main__":
    main()
