"""What an endpoint answered: a chat or completions reply parsed strictly, or ``MalformedResponse``.

Whatever field of a 200 reply is odd (a non-JSON body, a JSON array or ``null``, ``choices``/``message``/
``content`` of the wrong type, a non-numeric ``usage`` count, a non-string ``finish_reason``, an error object
sent with status 200, a body that cannot be decoded) the parser raises ``MalformedResponse``, which the client
retries and then counts as a failure: a bad reply never raises out of a stage.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class MalformedResponse(ValueError):
    """A 200 reply whose body is not a chat completion with message content."""


@dataclass
class Parsed:
    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int


def parse_completion(body: str | bytes) -> tuple[dict[str, Any], Parsed]:
    """The JSON of a chat completion and its content; ``MalformedResponse`` when it is not one.

    Any body that is not exactly a chat completion (not JSON, not an object, an ``error`` object sent
    with status 200, ``choices`` or ``message`` of the wrong shape, content that is not a string, a
    non-string ``finish_reason`` or ``model``, token counts that are not non-negative integers) is
    malformed: the caller retries it and, after ``max_attempts``, counts it as failed. Nothing else
    is raised, whatever the body holds.
    """
    data, body = _json_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse(f"no choices in the reply: {_excerpt(body)}")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedResponse(f"choices[0].message.content is not a string: {_excerpt(body)}")
    return data, _parsed(data, content, choices[0], body)


def parse_text_completion(body: str | bytes) -> tuple[dict[str, Any], Parsed]:
    """The JSON of a completions-API reply and its ``choices[0].text``; ``MalformedResponse`` for
    anything else (the same rules as ``parse_completion``)."""
    data, body = _json_object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse(f"no choices in the reply: {_excerpt(body)}")
    text = choices[0].get("text")
    if not isinstance(text, str):
        raise MalformedResponse(f"choices[0].text is not a string: {_excerpt(body)}")
    return data, _parsed(data, text, choices[0], body)


def _json_object(body: str | bytes) -> tuple[dict[str, Any], str]:
    """``body`` (UTF-8 when bytes) parsed as a JSON object, and its text; ``MalformedResponse`` for
    anything else (including an OpenAI error object sent with status 200)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedResponse(
                f"body is not UTF-8 ({e.reason} at byte {e.start}): {body[:80]!r}"
            ) from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedResponse(f"body is not JSON ({e.msg} at {e.pos}): {_excerpt(body)}") from None
    except (ValueError, RecursionError) as e:  # e.g. nesting deeper than the parser's stack
        raise MalformedResponse(f"body is not usable JSON ({type(e).__name__}): {_excerpt(body)}") from None
    if not isinstance(data, dict):
        raise MalformedResponse(f"body is a JSON {type(data).__name__}, not an object: {_excerpt(body)}")
    if "error" in data and "choices" not in data:
        raise MalformedResponse(f"status 200 with an error object: {_excerpt(body)}")
    return data, body


def _parsed(data: dict[str, Any], text: str, choice: dict[str, Any], body: str) -> Parsed:
    """The fields every reply kind shares: finish reason, model and token usage, type-checked."""
    finish_reason, model = choice.get("finish_reason"), data.get("model")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise MalformedResponse(f"choices[0].finish_reason is not a string: {_excerpt(body)}")
    if model is not None and not isinstance(model, str):
        raise MalformedResponse(f"model is not a string: {_excerpt(body)}")
    usage = data.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise MalformedResponse(f"usage is not an object: {_excerpt(body)}")
    return Parsed(
        text=text,
        finish_reason=finish_reason,
        model=model,
        prompt_tokens=_count(usage, "prompt_tokens", body),
        completion_tokens=_count(usage, "completion_tokens", body),
    )


def _count(usage: Mapping[str, Any], name: str, body: str) -> int:
    """A token count: absent or null is 0; a non-negative integer (``12`` or ``12.0``) is kept;
    anything else is a malformed reply."""
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedResponse(f"usage.{name} is not a token count ({value!r}): {_excerpt(body)}")
    return value


def _excerpt(body: str, n: int = 120) -> str:
    return repr(body[:n]) + ("..." if len(body) > n else "")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); ``None`` if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    with contextlib.suppress(TypeError, ValueError):
        if ms is not None and math.isfinite(float(ms)):
            return float(ms) / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    date = email.utils.parsedate_tz(value)
    if date is None:
        return None
    return max(0.0, email.utils.mktime_tz(date) - time.time())
