"""A tiny OpenAI-compatible HTTP server (stdlib, one thread per request) whose replies a test scripts.

``FakeServer(handler)``: ``handler(path, body) -> (status, payload)`` where payload is a dict (sent as JSON), bytes
(sent as they are: malformed bodies), or ``("sleep", seconds, payload)`` to answer late. It records every request
and the largest number of requests in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(text: str, finish: str = "stop", prompt_tokens: int = 10, completion_tokens: int = 5) -> dict:
    """A /v1/chat/completions body as the OpenAI API documents it."""
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }  # fmt: skip


def vllm_completion(prompt_ids: list[int], ids: list[int], logprobs: list[float], finish: str = "stop",
                    as_token_ids_only: bool = False) -> dict:  # fmt: skip
    """A /v1/completions body in vLLM's shape for ``logprobs=0, return_token_ids=true,
    return_tokens_as_token_ids=true`` (fields as vLLM's OpenAI server documents them: ``logprobs`` with
    text_offset / token_logprobs / tokens / top_logprobs, ``stop_reason``, ``prompt_token_ids``, ``token_ids``)."""
    choice = {
        "index": 0,
        "text": "".join(f"<{i}>" for i in ids),
        "logprobs": {
            "text_offset": [3 * k for k in range(len(ids))],
            "token_logprobs": logprobs,
            "tokens": [f"token_id:{i}" for i in ids],
            "top_logprobs": [{f"token_id:{i}": lp} for i, lp in zip(ids, logprobs)],
        },
        "finish_reason": finish,
        "stop_reason": None,
        "prompt_logprobs": None,
        "prompt_token_ids": prompt_ids,
        "token_ids": ids,
    }
    if as_token_ids_only:  # an older vLLM without return_token_ids: ids only inside logprobs.tokens
        del choice["token_ids"], choice["prompt_token_ids"]
    return {
        "id": "cmpl-1", "object": "text_completion", "created": 0, "model": "fake", "choices": [choice],
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                  "total_tokens": len(prompt_ids) + len(ids)},
    }  # fmt: skip


class FakeServer:
    def __init__(self, handler):
        self.handler = handler
        self.requests: list[tuple[str, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _answer(self, body: dict):
                with lock:
                    outer.requests.append((self.path, body))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload = outer.handler(self.path, body)
                    if isinstance(payload, tuple) and payload[0] == "sleep":
                        time.sleep(payload[1])
                        payload = payload[2]
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with lock:
                        outer.in_flight -= 1

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self._answer(json.loads(self.rfile.read(length) or b"{}"))

            def do_GET(self):
                self._answer({})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
