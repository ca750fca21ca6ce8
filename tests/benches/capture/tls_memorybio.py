"""In-memory TLS with the system libssl: a client and a server SSLObject joined
by MemoryBIOs in one process, exchanging 1 KiB records. No socket is involved,
so the time per SSL call is libssl's own plus whatever the agent's uprobes add.

    tls_memorybio.py CERT KEY SECONDS

Prints one JSON line: SSL calls made (SSL_write_ex/SSL_read_ex, 4 per round)
and the wall time they took.
"""

import json
import ssl
import sys
import time


def pump(src, dst):
    data = src.read()
    if data:
        dst.write(data)


def main():
    cert, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl._create_unverified_context()
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pump(c_out, s_in)
        pump(s_out, c_in)
    payload = b"x" * 1024
    rounds = 0
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)
    while True:
        for _ in range(200):
            client.write(payload)
            pump(c_out, s_in)
            assert len(server.read(1024)) == 1024
            server.write(payload)
            pump(s_out, c_in)
            assert len(client.read(1024)) == 1024
        rounds += 200
        now = time.perf_counter_ns()
        if now >= deadline:
            break
    print(json.dumps({"ops": rounds * 4, "ns": now - started}))


if __name__ == "__main__":
    sys.exit(main())
