"""API keys: `Authorization: Bearer KEY` on every route but /healthz and /readyz.

Keys come from the environment (`FINLORA_API_KEYS`, comma-separated) and/or a file
(`api_keys_file`, one key per line, `#` comments), never from a command-line value (`ps` shows
those). Several keys may be valid at once, so a key can be rotated without downtime. The check
hashes the given key and compares it with every configured key's hash in constant time, with no
early exit, so timing tells neither whether a key is close nor which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

from finlora.errors import FinloraError

ENV_VAR = "FINLORA_API_KEYS"
OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
MIN_KEY_CHARS = 16


def load_api_keys(api_keys_file: Path | None, environ=None) -> list[str]:
    """The configured keys (env first, then the file), without duplicates; [] when none."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get(ENV_VAR, "").split(",") if k.strip()]
    if api_keys_file is not None:
        try:
            lines = Path(api_keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise FinloraError(f"cannot read api_keys_file {api_keys_file}: {exc}") from None
        from_file = [line.split("#", 1)[0].strip() for line in lines]
        from_file = [k for k in from_file if k]
        if not from_file:
            raise FinloraError(f"api_keys_file {api_keys_file} has no keys (one per line)")
        keys += from_file
    for number, key in enumerate(keys, 1):
        # Never echo a key: say which one (by position) is wrong, not what it is.
        if not key.isascii() or not key.isprintable() or " " in key:
            raise FinloraError(f"API key {number} has spaces or non-printable/non-ASCII characters")
        if len(key) < MIN_KEY_CHARS:
            raise FinloraError(
                f"API key {number} is {len(key)} characters; use at least {MIN_KEY_CHARS} "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
    return list(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeyMiddleware:
    """Plain ASGI: a request without a valid key gets 401 before any route runs."""

    def __init__(self, app, keys: list[str], send_error) -> None:
        self.app = app
        self.digests = [_digest(k.encode()) for k in keys]
        self.send_error = send_error  # async (send, status, detail, headers)

    def allowed(self, authorization: bytes) -> bool:
        scheme, _, given = authorization.partition(b" ")
        given_digest = _digest(given.strip())
        match = 0
        for digest in self.digests:  # every key, every time: no early exit
            match |= hmac.compare_digest(given_digest, digest)
        return bool(match) and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.digests or scope["path"] in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        if self.allowed(authorization):
            return await self.app(scope, receive, send)
        detail = "invalid API key" if authorization else "missing API key"
        detail += "; send Authorization: Bearer KEY"
        await self.send_error(send, 401, detail, [(b"www-authenticate", b"Bearer")])
