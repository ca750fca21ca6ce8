"""One Chat Completions call over TLS through libssl with
SSL_MODE_ENABLE_PARTIAL_WRITE, driven with ctypes: each SSL_write returns
after one record (16 KiB at most), and the caller goes on from inside the
same buffer, as servers and proxies that set that mode do.

    partial_write.py HOST PORT MODEL

Prints the number of SSL_write calls the request took.
"""

import ctypes
import ctypes.util
import json
import socket
import sys

SSL_CTRL_MODE = 33
SSL_MODE_ENABLE_PARTIAL_WRITE = 1


def main():
    host, port, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
    lib.TLS_client_method.restype = ctypes.c_void_p
    lib.SSL_CTX_new.restype = ctypes.c_void_p
    lib.SSL_CTX_new.argtypes = [ctypes.c_void_p]
    lib.SSL_new.restype = ctypes.c_void_p
    lib.SSL_new.argtypes = [ctypes.c_void_p]
    lib.SSL_set_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.SSL_connect.argtypes = [ctypes.c_void_p]
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.SSL_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.SSL_shutdown.argtypes = [ctypes.c_void_p]
    lib.SSL_free.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_free.argtypes = [ctypes.c_void_p]

    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    ssl = lib.SSL_new(ctx)
    sock = socket.create_connection((host, port))
    lib.SSL_set_fd(ssl, sock.fileno())
    assert lib.SSL_connect(ssl) == 1, "handshake failed"
    lib.SSL_ctrl(ssl, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE, None)

    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "word " * 20_000}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % (host.encode(), len(body))
    ) + body
    buf = ctypes.create_string_buffer(request, len(request))
    base = ctypes.addressof(buf)
    sent, writes = 0, 0
    while sent < len(request):
        n = lib.SSL_write(ssl, base + sent, len(request) - sent)
        assert n > 0, "SSL_write failed"
        sent += n
        writes += 1
    assert writes > 1, "the library wrote everything in one call: partial mode is not on"

    response = b""
    chunk = ctypes.create_string_buffer(65536)
    while True:
        n = lib.SSL_read(ssl, chunk, len(chunk))
        if n <= 0:
            break
        response += chunk.raw[:n]
    assert response.startswith(b"HTTP/1.1 200"), response[:100]
    head, _, payload = response.partition(b"\r\n\r\n")
    assert json.loads(payload)["usage"]["prompt_tokens"] == 21
    lib.SSL_shutdown(ssl)
    lib.SSL_free(ssl)
    lib.SSL_CTX_free(ctx)
    sock.close()
    print(writes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
