"""Reading a JSON request body: a size cap and a time limit, then a decoder that turns hostile
JSON into the contract's 400 instead of an error deep inside the server.

Refused, wherever they stand in the body (ignored fields included): nesting deeper than
MAX_DEPTH, integers longer than MAX_INT_DIGITS, NaN and infinities, text that is not valid
UTF-8, unpaired surrogates (`"\\ud800"`, which no database or response can hold), and NUL
characters (PostgreSQL's text cannot hold them; SQLite's could, and both must behave alike).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from typing import Any

from fastapi import Request

from darkroom.errors import InvalidRequest, PayloadTooLarge

MAX_DEPTH = 32
MAX_INT_DIGITS = 64


async def read_json(request: Request, max_bytes: int, timeout_s: float = 30.0) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise InvalidRequest(f"request body was not received within {timeout_s:g} s") from None
    request.state.body_read = True
    return decode_json(b"".join(chunks))


def body_hash(raw: Any) -> str:
    """A decoded JSON body's SHA-256, key order and spacing aside: which requests are the same."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def body_left_unread(request: Request) -> bool:
    """Whether the client declared a body that the server did not read to its end (refused
    before it, too large, too slow): that connection must close after the answer, or a client
    trickling its body holds the socket for as long as it likes."""
    if getattr(request.state, "body_read", False):
        return False
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    return chunked or (declared is not None and declared.strip() not in ("", "0"))


def decode_json(raw: bytes) -> Any:
    """The JSON value of `raw`, or InvalidRequest saying what is wrong with it."""
    if not raw.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    _check_values(value)
    return value


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidRequest(f"request body has an integer of more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest("request body has a number too large to represent")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON value")


def _too_deep() -> InvalidRequest:
    return InvalidRequest(f"request body is nested more than {MAX_DEPTH} levels deep")


def _check_values(value: Any) -> None:
    """Refuse deep nesting and strings no database or response can hold, without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise _too_deep()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path or "request body")
                stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        else:
            stack.extend((child, path, depth + 1) for child in item)


def _check_text(text: str, path: str) -> None:
    param = path or None
    where = path or "request body"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{where} holds an unpaired UTF-16 surrogate, which is not text", param=param
        ) from None
    if "\x00" in text:
        raise InvalidRequest(f"{where} must not contain NUL (\\u0000) characters", param=param)
