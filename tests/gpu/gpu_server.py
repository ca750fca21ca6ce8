"""A tiny OpenAI-compatible server doing real GPU work per generated token.

POST /v1/chat/completions with `max_tokens`: runs `max_tokens` matmul steps on
the GPU, timed with CUDA events, and answers with OpenAI-shaped usage
(prompt_tokens: words in the messages, completion_tokens: max_tokens). GET
/stats returns the GPU busy seconds it measured. Prints `READY <port> <pid>`.
"""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
lock = threading.Lock()
stats = {"busy_s": 0.0, "calls": 0}


def generate(tokens):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with lock:
        start.record()
        for _ in range(tokens * 4):
            a @ b
        end.record()
        end.synchronize()
        stats["busy_s"] += start.elapsed_time(end) / 1000.0
        stats["calls"] += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.reply(dict(stats))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        tokens = int(body.get("max_tokens", 16))
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        generate(tokens)
        self.reply({
            "id": "chatcmpl-gpu", "object": "chat.completion", "created": 1,
            "model": body.get("model", "local-gpu"),
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "x " * tokens}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": tokens,
                      "total_tokens": prompt + tokens},
        })


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"READY {server.server_address[1]} {os.getpid()}", flush=True)
server.serve_forever()
