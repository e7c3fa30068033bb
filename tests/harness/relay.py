"""A ProxyCommand for the tests, as `nc HOST PORT` is in real ssh configs: relays its stdin and
stdout to a TCP port on loopback. Each run appends its pid to the file named by the third
argument, so a test can count how many connections went through it.

    ProxyCommand python3 tests/harness/relay.py %h %p /tmp/runs
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import sys


def main() -> int:
    host, port, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if not ipaddress.ip_address(host).is_loopback:  # tests dial 127.0.0.0/8 only
        print(f"relay: {host} is not a loopback address", file=sys.stderr)
        return 2
    with open(runs, "a") as f:
        f.write(f"{os.getpid()}\n")
    try:
        conn = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        print(f"relay: cannot connect to {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    conn.settimeout(None)
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "in")
    selector.register(conn, selectors.EVENT_READ, "net")
    while True:
        for key, _ in selector.select():
            if key.data == "in":
                data = os.read(sys.stdin.fileno(), 65536)
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    selector.unregister(sys.stdin.fileno())
                    continue
                conn.sendall(data)
            else:
                data = conn.recv(65536)
                if not data:
                    return 0
                os.write(sys.stdout.fileno(), data)


if __name__ == "__main__":
    sys.exit(main())
