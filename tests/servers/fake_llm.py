"""A local LLM server for the end-to-end tests.

Speaks the OpenAI Chat Completions (JSON and SSE, with and without
stream_options.include_usage), Anthropic Messages (JSON and SSE) and Ollama
/api/chat (NDJSON) wire formats with fixed, known token usage, over HTTP or
HTTPS (--cert/--key). Prints "READY <port>" once listening.

Test knobs: a chat request with "test_chunks": N streams N content chunks
(one word each), "test_delay_ms" apart (default 10). With --log-dir, every
connection's bytes as the server read and wrote them (plaintext under TLS)
go to DIR/<n>-<peer port>.in and .out.
"""

import argparse
import io
import itertools
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["Tokens", " are", " counted", " by", " the", " provider", "."]
USAGE_IN, USAGE_OUT = 21, 7
LOG_DIR = None
CONNECTIONS = itertools.count()


class _TeeReader(io.RawIOBase):
    """The connection's receive side, copying every byte read to a file."""

    def __init__(self, sock, log):
        self.sock, self.log = sock, log

    def readable(self):
        return True

    def readinto(self, buf):
        n = self.sock.recv_into(buf)
        self.log.write(bytes(buf[:n]))
        self.log.flush()
        return n


class _TeeWriter(io.BufferedIOBase):
    """The connection's send side, copying every byte written to a file."""

    def __init__(self, sock, log):
        self.sock, self.log = sock, log

    def writable(self):
        return True

    def write(self, data):
        self.sock.sendall(data)
        self.log.write(bytes(data))
        self.log.flush()
        return len(data)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body are written apart: without this, Nagle holds the body ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        if LOG_DIR:
            name = os.path.join(LOG_DIR, "%d-%d" % (next(CONNECTIONS), self.client_address[1]))
            self._logs = (open(name + ".in", "wb"), open(name + ".out", "wb"))
            self.rfile = io.BufferedReader(_TeeReader(self.connection, self._logs[0]))
            self.wfile = _TeeWriter(self.connection, self._logs[1])

    def finish(self):
        super().finish()
        for log in getattr(self, "_logs", ()):
            log.close()

    def _body(self):
        # A client test asks the server to read late, so that its socket fills.
        time.sleep(int(self.headers.get("x-read-delay-ms", "0")) / 1000)
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def _json(self, status, obj, extra=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, content_type, chunks, delay=0.01):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            data = chunk.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        self._json(200, {"status": "ok"})

    def do_POST(self):
        body = self._body()
        model = body.get("model", "unknown")
        if self.path.endswith("/chat/completions"):
            return self.openai_chat(body, model)
        if self.path.endswith("/messages"):
            return self.anthropic(body, model)
        if self.path == "/api/chat":
            return self.ollama(body, model)
        self._json(404, {"error": "no such route"})

    def openai_chat(self, body, model):
        if model == "rate-limited":
            return self._json(
                429,
                {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
                {"retry-after": "3"},
            )
        usage = {
            "prompt_tokens": USAGE_IN,
            "completion_tokens": USAGE_OUT,
            "total_tokens": USAGE_IN + USAGE_OUT,
            "prompt_tokens_details": {"cached_tokens": 4},
        }
        if not body.get("stream"):
            # "big-response" answers with 2 MiB of content before the usage.
            content = "x" * (2 << 20) if model == "big-response" else "".join(WORDS)
            return self._json(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model + "-2025-01-01",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": usage,
            })
        include = (body.get("stream_options") or {}).get("include_usage")
        words = WORDS
        if body.get("test_chunks"):
            words = [" w%d" % i for i in range(int(body["test_chunks"]))]
        events = []
        for word in words:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": model + "-2025-01-01",
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            events.append("data: %s\n\n" % json.dumps(chunk))
        last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model + "-2025-01-01",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        events.append("data: %s\n\n" % json.dumps(last))
        if include:
            u = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": model + "-2025-01-01", "choices": [], "usage": usage}
            events.append("data: %s\n\n" % json.dumps(u))
        events.append("data: [DONE]\n\n")
        self._stream("text/event-stream", events, body.get("test_delay_ms", 10) / 1000)

    def anthropic(self, body, model):
        usage_start = {"input_tokens": USAGE_IN, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 10, "output_tokens": 1}
        if not body.get("stream"):
            return self._json(200, {
                "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(WORDS)}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": dict(usage_start, output_tokens=USAGE_OUT),
            })
        events = []

        def ev(name, obj):
            events.append("event: %s\ndata: %s\n\n" % (name, json.dumps(obj)))

        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage_start}})
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}})
        for word in WORDS:
            ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": word}})
        ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": USAGE_OUT}})
        ev("message_stop", {"type": "message_stop"})
        self._stream("text/event-stream", events)

    def ollama(self, body, model):
        lines = []
        for word in WORDS:
            lines.append(json.dumps({"model": model, "created_at": "2025-01-01T00:00:00Z",
                                     "message": {"role": "assistant", "content": word}, "done": False}) + "\n")
        lines.append(json.dumps({"model": model, "created_at": "2025-01-01T00:00:00Z",
                                 "message": {"role": "assistant", "content": ""}, "done": True,
                                 "done_reason": "stop", "prompt_eval_count": USAGE_IN,
                                 "eval_count": USAGE_OUT}) + "\n")
        if body.get("stream") is False:
            return self._json(200, json.loads(lines[-1]))
        self._stream("application/x-ndjson", lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--log-dir")
    args = parser.parse_args()
    global LOG_DIR
    LOG_DIR = args.log_dir
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("READY %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
