"""A client for OpenAI-compatible servers (vLLM, SGLang, ``transformers serve``, any endpoint): concurrent, retried.

``ServingClient.map(fn, items)`` sends one request per item through a thread pool of ``max_concurrency`` workers,
so all prompts of a lockstep rollout step are in flight together and the server can batch them. Each request is
tried ``1 + retries`` times (exponential back-off) on the failures a restart or an overload produces: refused
connection, timeout, HTTP 408/429/5xx, a body that is not the expected JSON, a reply without choices. Other HTTP
errors (400 bad request, 401 key, 404 unknown model) are not retried: trying again cannot fix them. When a request
still fails, ``ServerError`` names the URL, the request kind, the attempts and the last error; the caller has
already kept everything finished before it (``atom.collect`` appends as it goes).

The official ``openai`` package (shipped with ``transformers[serving]``) does the HTTP; its own retries are off so
that every failure kind above goes through the same counted loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from atom.errors import AtomError

MODES = ("chat", "tokens")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ServerConfig:
    base_url: str = ""  # OpenAI-compatible endpoint incl. /v1, e.g. http://localhost:8000/v1 ("" = no server)
    model: str = ""  # served model name sent with each request ("" = the first model GET /models lists)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (unset: a placeholder key)
    mode: str = "chat"  # chat: /chat/completions, text replies | tokens: /completions with token ids and log-probs
    max_concurrency: int = 16  # requests in flight at once (a lockstep step's prompts go out together)
    timeout_s: float = 600.0  # seconds per request before it counts as failed
    retries: int = 3  # extra attempts per request after a retryable failure (then a ServerError naming the URL)
    template_kwargs: bool = True  # chat mode: send chat_template_kwargs (enable_thinking); off for APIs that refuse it
    backoff_s: float = 1.0  # first wait between attempts in seconds; doubled after each failure (max 30 s)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"server.mode must be one of {list(MODES)}, got '{self.mode}'")
        if self.max_concurrency <= 0 or self.timeout_s <= 0:
            raise ValueError("server.max_concurrency and server.timeout_s must be > 0")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("server.retries and server.backoff_s must be >= 0")


class ServerError(AtomError, RuntimeError):
    """A request that still failed after its retries, or one that retrying cannot fix. Its message names the
    server's URL; the entry points print it as one line and exit 2 (a server that is down is not a bug)."""


class MalformedReply(ValueError):
    """The server answered 200 with something that is not the reply the API promises (retried)."""


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (MalformedReply, openai.APIConnectionError, openai.APIResponseValidationError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, ValueError)  # a body that is not JSON surfaces as a JSONDecodeError


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    body = getattr(exc, "body", None)  # the server's own error message (e.g. "unknown model")
    if body is not None and str(body) not in text:
        text += f" {body}"
    return f"{type(exc).__name__}: {text[:400]}"


class ServingClient:
    """One OpenAI-compatible endpoint. ``call`` retries one request; ``map`` runs many concurrently, in order."""

    def __init__(self, cfg: ServerConfig, what: str = "server"):
        if not cfg.base_url:
            raise ValueError(f"{what}.base_url is empty: set it to the server's OpenAI-compatible URL (.../v1)")
        from openai import OpenAI

        self.cfg, self.what = cfg, what
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        # Local servers ignore the key, but the client refuses to start without one.
        self.client = OpenAI(base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout_s, max_retries=0)
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix=f"atom-{what}")
        self._lock = threading.Lock()
        self.requests = 0  # successful requests
        self.failed_attempts = 0  # attempts that failed and were retried (or gave up)
        self._model = cfg.model
        self._model_lock = threading.Lock()

    @property
    def model(self) -> str:
        """The served model name (asked from GET /models once when the config leaves it empty)."""
        with self._model_lock:  # concurrent requests ask once
            if not self._model:
                self._model = self._listed_model()
        return self._model

    def _listed_model(self) -> str:
        listed = self.call("GET /models", lambda: [m.id for m in self.client.models.list().data])
        if not listed:
            raise ServerError(f"{self.cfg.base_url}: GET /models lists no model; set {self.what}.model")
        return listed[0]

    def call(self, kind: str, fn: Callable[[], R]) -> R:
        """``fn()`` with retries; ``kind`` names the request in errors (e.g. ``POST /chat/completions``)."""
        wait, errors = self.cfg.backoff_s, []
        for attempt in range(self.cfg.retries + 1):
            try:
                out = fn()
                with self._lock:
                    self.requests += 1
                return out
            except ServerError:
                raise  # a nested request (GET /models for the model name) already failed and said why
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as ServerError
                with self._lock:
                    self.failed_attempts += 1
                errors.append(_describe(exc))
                if not _retryable(exc):
                    raise ServerError(
                        f"{self.what} at {self.cfg.base_url}: {kind} failed and retrying cannot help: {errors[-1]}"
                    ) from exc
                if attempt < self.cfg.retries:
                    time.sleep(min(wait, 30.0))
                    wait *= 2
        raise ServerError(
            f"{self.what} at {self.cfg.base_url}: {kind} failed {len(errors)} times "
            f"({self.what}.retries={self.cfg.retries}, timeout {self.cfg.timeout_s:g} s); last error: {errors[-1]}"
        ) from None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn(item)`` for every item, at most ``max_concurrency`` at once; results in input order.

        After the first failure the requests not yet sent are cancelled (a server that is down fails once, not
        once per prompt); the error is raised when the ones in flight have finished (nothing is left running)."""
        futures = [self._pool.submit(fn, item) for item in items]
        results, first_error = [], None
        for fut in futures:
            try:
                results.append(fut.result())
            except CancelledError:
                continue
            except Exception as exc:  # noqa: BLE001 - re-raised once all requests are done
                if first_error is None:
                    first_error = exc
                    for other in futures:
                        other.cancel()
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def choice_of(reply: Any, kind: str) -> dict:
    """The first choice of a parsed completion as a dict; MalformedReply when there is none."""
    data = reply.model_dump() if hasattr(reply, "model_dump") else reply
    if not isinstance(data, dict):
        raise MalformedReply(f"{kind}: the reply is not a JSON object but {type(data).__name__}")
    choices = data.get("choices")
    if not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"{kind}: the reply has no choices")
    return {**choices[0], "usage": data.get("usage") or {}}
