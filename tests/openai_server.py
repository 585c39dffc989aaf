"""A real OpenAI-compatible server on 127.0.0.1, for tests, with injectable faults.

``OpenAIServer`` speaks ``POST /v1/chat/completions`` with the standard JSON reply (``id``, ``choices[0].
message.content``, ``finish_reason``, ``usage``) and ``POST /v1/completions`` (``choices[0].text``; the
prompt is seen by responders and fault functions as one user message, and ``body["api"]`` is
``"completions"``). Its answers come from a ``responder(messages, body) ->
str`` (deterministic, keyed off the prompt), and any request can be turned into a fault:

* ``"429"`` (no Retry-After), ``"429:1.5"`` (``Retry-After: 1.5``), ``"500"``, ``"502"``, ``"503"``,
  ``"401"``, ``"404"``, ``"400"`` (a prompt too long for the context, as llama.cpp says it): that HTTP
  status with an OpenAI-style error body;
* ``"slow:S"``: answer only after ``S`` seconds (beyond a client's timeout; outcome ``slow``, not ``ok``);
* ``"drop"``: read the request, then close the socket without a response;
* ``"malformed"``: status 200 with a truncated JSON body; ``"nochoices"``: valid JSON without ``choices``;
* ``"odd:NAME"``: status 200 with the body ``odd_reply(NAME, ...)``: a reply a client cannot use, one odd
  field at a time (``ODD_REPLIES`` lists them: non-numeric usage, choices of the wrong shape, content of
  the wrong type, a non-JSON body, a JSON array, nulls, ...); ``"bad_gzip"``: a body that says it is
  gzip-compressed and is not.

Faults are taken from a FIFO (``queue_faults``), in arrival order, or decided per request by
``fault_fn(prompt, attempt)`` where ``attempt`` counts the requests seen with that prompt (1, 2, ...).
Counters: ``received`` (POSTs), ``answered`` (valid completions sent), ``outcomes`` (per kind),
``max_in_flight`` (the most requests handled at once) and ``log`` (time, prompt, attempt, outcome).
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict], dict], str]
FaultFn = Callable[[str, int], "str | None"]


@dataclass(frozen=True)
class Event:
    time: float
    prompt: str
    attempt: int
    outcome: str


def last_user_message(messages: list[dict]) -> str:
    """The content of the last ``user`` message (the prompt a responder keys off)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def echo(messages: list[dict], body: dict) -> str:
    """The default responder: ``echo: <prompt>``."""
    return f"echo: {last_user_message(messages)}"


class OpenAIServer:
    """Start with ``with OpenAIServer(...) as server:``; point clients at ``server.url``."""

    def __init__(
        self,
        responder: Responder = echo,
        *,
        fault_fn: FaultFn | None = None,
        delay: float = 0.0,
        api_key: str | None = None,
        finish_reason: Callable[[list[dict], dict], str] | None = None,
    ) -> None:
        self.responder = responder
        self.finish_reason = finish_reason  # (messages, body) -> the reply's finish_reason ("stop" if None)
        self.fault_fn = fault_fn
        self.delay = delay  # seconds before every answer (to make runs long enough to interrupt)
        self.api_key = api_key  # when set, requests must carry "Authorization: Bearer <api_key>"
        self.faults: collections.deque[str] = collections.deque()
        self.lock = threading.Lock()
        self.received = 0
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at once
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.attempts: collections.Counter[str] = collections.Counter()
        self.log: list[Event] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ---------------------------------------------------------------------------------------
    def queue_faults(self, *faults: str) -> None:
        """Apply these faults to the next requests, one each, in arrival order."""
        with self.lock:
            self.faults.extend(faults)

    def reset_counts(self) -> None:
        with self.lock:
            self.received = self.answered = self.max_in_flight = 0
            self.outcomes.clear()
            self.attempts.clear()
            self.log.clear()

    def events(self, prompt: str) -> list[Event]:
        with self.lock:
            return [e for e in self.log if e.prompt == prompt]

    # -- used by the handler -----------------------------------------------------------------------------
    def _admit(self, prompt: str) -> tuple[int, str | None]:
        with self.lock:
            self.received += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.attempts[prompt] += 1
            attempt = self.attempts[prompt]
            fault = self.faults.popleft() if self.faults else None
        if fault is None and self.fault_fn is not None:
            fault = self.fault_fn(prompt, attempt)
        return attempt, fault

    def _record(self, prompt: str, attempt: int, outcome: str) -> None:
        with self.lock:
            self.in_flight -= 1
            self.outcomes[outcome] += 1
            if outcome == "ok":
                self.answered += 1
            self.log.append(Event(time.monotonic(), prompt, attempt, outcome))


def completion(
    content: str, model: str, n: int, prompt: str, finish_reason: str = "stop", api: str = "chat"
) -> dict[str, Any]:
    """A standard chat-completion object (``api="completions"``: a text completion)."""
    if api == "completions":
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    return {
        "id": f"{'cmpl' if api == 'completions' else 'chatcmpl'}-fake-{n}",
        "object": "text_completion" if api == "completions" else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(content.split()),
            "total_tokens": len(prompt.split()) + len(content.split()),
        },
    }


def _with(path: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    """A reply maker: the standard completion with the field at ``path`` (dots; digits index lists) set
    to ``value``."""

    def make(good: dict[str, Any]) -> bytes:
        node: Any = good
        where = path
        if where == "choices.0.message.content" and "text" in good["choices"][0]:
            where = "choices.0.text"  # a text completion's content
        *parents, last = where.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
        return json.dumps(good).encode()

    return make


def _raw(body: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda good: body


# Replies a client cannot parse, each odd in one way; every one must be a malformed reply (retried,
# then counted as failed), never an exception out of the client.
ODD_REPLIES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "usage_string": _with("usage.prompt_tokens", "many"),
    "usage_negative": _with("usage.completion_tokens", -3),
    "usage_fraction": _with("usage.prompt_tokens", 1.5),
    "usage_bool": _with("usage.completion_tokens", True),
    "usage_list": _with("usage", [1, 2]),
    "usage_string_object": _with("usage", "n/a"),
    "choices_object": _with("choices", {"0": {"message": {"content": "x"}}}),
    "choices_empty": _with("choices", []),
    "choices_null": _with("choices", None),
    "choice_null": _with("choices.0", None),
    "choice_string": _with("choices.0", "hello"),
    "message_null": _with("choices.0.message", None),
    "message_string": _with("choices.0.message", "hello"),
    "content_null": _with("choices.0.message.content", None),
    "content_number": _with("choices.0.message.content", 42),
    "content_list": _with("choices.0.message.content", [{"type": "text", "text": "x"}]),
    "finish_reason_number": _with("choices.0.finish_reason", 3),
    "finish_reason_object": _with("choices.0.finish_reason", {"type": "stop"}),
    "model_number": _with("model", 7),
    "not_json": _raw(b"<html><body>502 Bad Gateway</body></html>"),
    "empty_body": _raw(b""),
    "json_array": _raw(b'[{"choices": []}]'),
    "json_null": _raw(b"null"),
    "json_string": _raw(b'"hello"'),
    "json_number": _raw(b"12"),
    "error_object": _raw(b'{"error": {"message": "model overloaded", "type": "server_error"}}'),
    "deep_nesting": _raw(b"[" * 100_000 + b"]" * 100_000),
    "invalid_utf8": _raw(b'{"choices": [{"message": {"content": "\xff\xfe"}}]}'),
    "nan_usage": _raw(b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": NaN}}'),
}


# odd only in a chat reply (a text completion has no ``message``)
CHAT_ONLY_ODD = frozenset({"message_null", "message_string"})


def odd_reply(name: str, good: dict[str, Any]) -> bytes:
    """The body of fault ``odd:NAME``, made from the standard reply ``good``."""
    return ODD_REPLIES[name](good)


_STATUS_TEXT = {
    400: (  # llama.cpp's answer to a prompt longer than a slot's context
        "exceed_context_size_error",
        "request (3031 tokens) exceeds the available context size (1024 tokens), try increasing it",
    ),
    401: ("invalid_api_key", "Incorrect API key provided."),
    404: ("model_not_found", "The model does not exist."),
    429: ("rate_limit_exceeded", "Rate limit reached."),
    500: ("server_error", "The server had an error."),
    502: ("bad_gateway", "Bad gateway."),
    503: ("overloaded", "The engine is currently overloaded."),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: OpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, killed)
            self.close_connection = True
            raise

    def _error(self, status: int, headers: dict[str, str] | None = None) -> None:
        code, message = _STATUS_TEXT.get(status, ("error", "error"))
        body = {"error": {"message": message, "type": code, "param": None, "code": code}}
        self._send(status, json.dumps(body).encode(), headers)

    def do_POST(self) -> None:
        server = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.rstrip("/").removeprefix("/v1")
        if path not in ("/chat/completions", "/completions"):
            self._error(404)
            return
        body = json.loads(raw)
        if path == "/completions":  # the prompt stands for one user message
            body["messages"] = [{"role": "user", "content": str(body.get("prompt", ""))}]
            body["api"] = "completions"
        messages = body.get("messages", [])
        prompt = last_user_message(messages)
        attempt, fault = server._admit(prompt)
        if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            fault = "401"
        outcome = "error"  # the responder raised: the test's bug, surfaced as a dropped connection
        try:
            outcome = self._respond(server, body, messages, prompt, fault)
        except (BrokenPipeError, ConnectionResetError):
            outcome = "client_gone"
        finally:
            server._record(prompt, attempt, outcome)

    def _respond(
        self, server: OpenAIServer, body: dict, messages: list, prompt: str, fault: str | None
    ) -> str:
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return "drop"
        if fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "trunc')
            return "malformed"
        if fault is not None and fault.startswith("odd:"):
            content = server.responder(messages, body)
            good = completion(content, body.get("model", "fake"), 0, prompt, api=body.get("api", "chat"))
            self._send(200, odd_reply(fault[4:], good))
            return fault
        if fault == "bad_gzip":  # says gzip, is not: the HTTP client cannot decode the body
            self._send(200, b"this is not gzip data", {"Content-Encoding": "gzip"})
            return "bad_gzip"
        if fault == "nochoices":
            self._send(200, json.dumps({"id": "chatcmpl-empty", "object": "chat.completion"}).encode())
            return "nochoices"
        if fault is not None and fault.split(":")[0].isdigit():
            status, _, retry_after = fault.partition(":")
            self._error(int(status), {"Retry-After": retry_after} if retry_after else None)
            return status
        slow = fault is not None and fault.startswith("slow:")
        wait = server.delay + (float(fault.split(":")[1]) if slow else 0.0)  # type: ignore[union-attr]
        if wait:
            time.sleep(wait)
        content = server.responder(messages, body)
        with server.lock:
            n = server.received
        reason = server.finish_reason(messages, body) if server.finish_reason else "stop"
        reply = completion(content, body.get("model", "fake"), n, prompt, reason, body.get("api", "chat"))
        self._send(200, json.dumps(reply).encode())
        return "slow" if slow else "ok"  # a slow answer is not counted as answered: its client gave up


def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
