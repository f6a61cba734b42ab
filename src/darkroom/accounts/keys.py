"""API key material: high-entropy secrets with a recognisable prefix, kept only as hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "dk-"
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"^dk-[A-Za-z0-9_-]{43}$")


def generate_key() -> str:
    """A new key: `dk-` and 256 random bits, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def looks_like_key(value: str) -> bool:
    return _KEY_RE.fullmatch(value) is not None


def hash_key(key: str) -> str:
    """SHA-256 hex: enough for 256-bit random secrets, which no dictionary can reach."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings."""
    return key[:10]


def hashes_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
