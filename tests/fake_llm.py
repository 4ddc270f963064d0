"""A local OpenAI-compatible chat-completions server, so that nothing reaches the network.

``FakeLLM`` runs a stdlib HTTP server in a thread on 127.0.0.1 and answers
``POST /v1/chat/completions`` as OpenAI does::

    {"id": "chatcmpl-fake-1", "object": "chat.completion", "created": 1750000000,
     "model": "<the model asked for>",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."},
                  "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

or, when told to fail, ``{"error": {"message": "...", "type": "server_error"}}`` with the
status given. It records every request (headers and JSON body) and can be told to answer
slowly (to exercise timeouts). The default answer echoes the last user message.

Run it alone for a demo: ``python tests/fake_llm.py --port 8790``, then
``PGWA_LLM_BASE_URL=http://127.0.0.1:8790/v1 make worker``.
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Self


def echo(body: dict) -> str:
    """The default answer: the last user message, echoed."""
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return f"You said: {users[-1]}" if users else "Hello!"


class FakeLLM:
    """A chat-completions endpoint at ``url`` (``http://127.0.0.1:<port>/v1``)."""

    def __init__(self, reply: str | Callable[[dict], str] = echo, *, port: int = 0) -> None:
        self.reply = reply
        self.delay_s = 0.0
        self.status = 200
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._closing = threading.Event()    # cuts a slow answer short: close() never waits it out
        self._ids = itertools.count(1)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                    delay, status, reply = fake.delay_s, fake.status, fake.reply
                if delay:
                    fake._closing.wait(delay)
                if not self.path.endswith("/chat/completions"):
                    status, answer = 404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}}
                elif not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    status, answer = 400, {"error": {"message": "messages is required", "type": "invalid_request_error"}}
                elif status != 200:
                    answer = {"error": {"message": "the fake was told to fail", "type": "server_error"}}
                else:
                    text = reply(body) if callable(reply) else reply
                    answer = {"id": f"chatcmpl-fake-{next(fake._ids)}", "object": "chat.completion",
                              "created": int(time.time()), "model": body.get("model"),
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass            # the client gave up (a timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, *, reply: str | Callable[[dict], str] | None = None, delay_s: float | None = None,
            status: int | None = None) -> None:
        with self.lock:
            if reply is not None:
                self.reply = reply
            if delay_s is not None:
                self.delay_s = delay_s
            if status is not None:
                self.status = status

    def calls(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8790)
    args = parser.parse_args()
    fake = FakeLLM(port=args.port)
    print(f"fake LLM at {fake.url}", flush=True)
    try:
        fake.thread.join()
    except KeyboardInterrupt:
        fake.close()
