"""Chat Completions calls with the standard library only, for the capture tests.

    stdlib_chat.py BASE urllib MODEL...       one urllib.request call per model
    stdlib_chat.py BASE http.client MODEL...  all models on one keep-alive connection
    stdlib_chat.py BASE big MODEL
        one call with a 200 KB prompt through a 4 KiB send buffer to a server
        asked to wait 500 ms before reading it: the socket fills, and over
        TLS the library's write fails (want-write) and is called again with
        the same bytes
    stdlib_chat.py BASE forked MODEL...
        two processes forked after start-up (as a pre-fork server's workers
        are), each with its own keep-alive connection, calling in lockstep:
        worker I calls MODEL-wI for each MODEL. Their heaps are copies, so
        their SSL objects can sit at the same address. Prints the workers'
        pids, one JSON list.
    stdlib_chat.py BASE http.client --before FILE MODEL...
        one call on a connection opened now, then "WAITING" on stdout; once FILE
        exists, the models on that same connection, then one more call
        ("after-new-connection") on a new connection.

TLS (https BASE) goes through the system libssl (SSL_read_ex/SSL_write_ex);
certificates are not checked (the test server's is self-signed).
"""

import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
import urllib.request

PATH = "/v1/chat/completions"


def body(model):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi from " + model}]}).encode()


def connection(base, timeout=None):
    url = urllib.parse.urlsplit(base)
    if url.scheme == "https":
        return http.client.HTTPSConnection(
            url.hostname, url.port, timeout=timeout, context=ssl._create_unverified_context()
        )
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def big_call(base, model):
    # A timeout makes the socket non-blocking underneath: a full socket
    # returns EAGAIN to the library instead of blocking in it.
    conn = connection(base, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    prompt = "word " * 40_000
    data = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()
    conn.request("POST", PATH, data, {"content-type": "application/json", "x-read-delay-ms": "500"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    assert json.loads(response.read())["usage"]["prompt_tokens"] == 21
    conn.close()


def call(conn, model):
    conn.request("POST", PATH, body(model), {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data)
    assert json.loads(data)["usage"]["prompt_tokens"] == 21


def forked(base, models):
    import multiprocessing

    barrier = multiprocessing.get_context("fork").Barrier(2, timeout=20)
    workers = []
    for index in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn = connection(base)
                conn.connect()
                barrier.wait()
                for model in models:
                    call(conn, f"{model}-w{index}")
                    barrier.wait()
                conn.close()
                code = 0
            finally:
                os._exit(code)
        workers.append(pid)
    print(json.dumps(workers), flush=True)
    failed = [pid for pid in workers if os.waitpid(pid, 0)[1] != 0]
    assert not failed, f"workers failed: {failed}"


def main():
    base, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "forked":
        forked(base, args)
        return 0
    if mode == "urllib":
        context = ssl._create_unverified_context()
        for model in args:
            request = urllib.request.Request(base + PATH, body(model), {"content-type": "application/json"})
            with urllib.request.urlopen(request, context=context if base.startswith("https") else None) as r:
                assert json.loads(r.read())["usage"]["completion_tokens"] == 7
        return 0
    if mode == "big":
        big_call(base, args[0])
        return 0
    before = None
    if args[:1] == ["--before"]:
        before, args = args[1], args[2:]
    conn = connection(base)
    if before:
        call(conn, "before-agent")
        print("WAITING", flush=True)
        while not os.path.exists(before):
            time.sleep(0.05)
    for model in args:
        call(conn, model)
    conn.close()
    if before:
        fresh = connection(base)
        call(fresh, "after-new-connection")
        fresh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
