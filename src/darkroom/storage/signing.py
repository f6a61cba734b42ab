"""HMAC-signed, expiring links to stored results."""

from __future__ import annotations

import hashlib
import hmac


class LinkSigner:
    """Signs `path` together with its expiry; checking is constant-time."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def is_authentic(self, path: str, expires: int, signature: str) -> bool:
        """True if `signature` was made by this secret for this path and expiry (expired or not)."""
        return hmac.compare_digest(self.signature(path, expires), signature)
