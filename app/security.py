"""API-token auth for /api and the dashboard, and encryption of CRM credentials at rest.

For the embedded default (no FUNNELSYNC_API_TOKEN / FUNNELSYNC_SECRET_KEY) both secrets are
generated once into files under the data folder with mode 0600, so `make demo` works with no set-up
and the secrets never enter the repository, the environment dump or a log line.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Annotated

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings, check_api_token

API_TOKEN_FILE = "api-token"
SECRET_KEY_FILE = "secret.key"


def read_or_create_secret(path: Path, make: str) -> str:
    """Read a secret file, creating it atomically with mode 0600 on first use."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data folder: its owner's only
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(make)
    return make


def api_token(settings: Settings) -> str:
    """The admin token; raises ValueError (the service refuses to start) when it is too short,
    whether it came from the environment or from a hand-edited api-token file."""
    if settings.api_token is not None:
        return check_api_token(settings.api_token.get_secret_value(), "FUNNELSYNC_API_TOKEN")
    path = settings.data_dir / API_TOKEN_FILE
    return check_api_token(read_or_create_secret(path, secrets.token_urlsafe(32)), f"the token in {path}")


def secret_key(settings: Settings) -> str:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    return read_or_create_secret(settings.data_dir / SECRET_KEY_FILE, Fernet.generate_key().decode())


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A 32-byte key for one purpose (HKDF-SHA256 over the secret key): what signs dashboard
    sessions is neither the Fernet key itself nor anything a client ever presents."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"funnelsync {purpose}".encode())
    return hkdf.derive(secret_key(settings).encode())


def fernet(settings: Settings) -> Fernet:
    key = secret_key(settings)
    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise ValueError(
            "FUNNELSYNC_SECRET_KEY is not a valid Fernet key (32 url-safe base64-encoded bytes); "
            "generate one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        ) from exc


def encrypt(settings: Settings, plaintext: str) -> str:
    return fernet(settings).encrypt(plaintext.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    try:
        return fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("stored credentials cannot be decrypted with the current secret key") from exc


def tokens_match(given: object, expected: str) -> bool:
    """Constant-time comparison of a presented credential with the stored one. Whatever was
    presented (a lone surrogate from a JSON escape, not a string at all) is a mismatch, never an
    error: a malformed credential is a 401, not a 500."""
    if not isinstance(given, str):
        return False
    # surrogatepass: a lone surrogate ("\udfff") encodes to bytes no real token has, instead of raising.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def fingerprint(key: bytes, secret: str) -> str:
    """A short keyed digest of a secret, to notice that it changed without storing it."""
    return hmac.new(key, secret.encode("utf-8", "surrogatepass"), sha256).hexdigest()[:32]


class FailureThrottle:
    """Failed credentials per client address within a sliding window. In memory, so each process
    counts its own: with N workers an address gets at most N times `allowed` tries per window."""

    # Addresses remembered at most: a flood from many addresses must not grow memory without bound.
    MAX_CLIENTS = 10_000

    def __init__(self, allowed: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = allowed
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until `client` may try again, or None when it may now."""
        failures = self._recent(client)
        if len(failures) < self.allowed:
            return None
        return max(1, math.ceil(failures[0] + self.window - self.clock()))

    def record_failure(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.MAX_CLIENTS:
            self._forget_stale()
            if len(self._failures) >= self.MAX_CLIENTS:  # all busy: drop the longest-known one
                del self._failures[next(iter(self._failures))]
        failures = self._recent(client)
        failures.append(self.clock())
        while len(failures) > self.allowed:  # only the last `allowed` decide when the block ends
            failures.popleft()
        self._failures[client] = failures

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client, deque())
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures

    def _forget_stale(self) -> None:
        for client in [c for c in self._failures if not self._recent(c)]:
            del self._failures[client]


def auth_throttle(request: Request) -> FailureThrottle:
    """The app's throttle of failed logins and bearer tokens, made on first use."""
    throttle: FailureThrottle | None = getattr(request.app.state, "auth_throttle", None)
    if throttle is None:
        settings: Settings = request.app.state.settings
        throttle = FailureThrottle(settings.auth_failures_allowed, settings.auth_failure_window_seconds)
        request.app.state.auth_throttle = throttle
    return throttle


def client_address(request: Request) -> str:
    # Behind a reverse proxy this is the proxy unless uvicorn trusts its X-Forwarded-For
    # (--proxy-headers --forwarded-allow-ips): then one address stands for every user.
    return request.client.host if request.client else "unknown"


def refuse_if_throttled(request: Request) -> None:
    """429 with Retry-After while the client's failures fill the window: checked before the
    credential is compared, so a throttled guesser learns nothing, not even a right guess."""
    wait = auth_throttle(request).retry_after(client_address(request))
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed attempts from this address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def record_auth_failure(request: Request) -> None:
    auth_throttle(request).record_failure(client_address(request))


_bearer = HTTPBearer(auto_error=False)


async def require_api_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin API guard: `Authorization: Bearer <FUNNELSYNC_API_TOKEN>`. Wrong tokens count towards
    the client's throttle; a missing one (a stray request, not a guess) does not."""
    refuse_if_throttled(request)
    expected: str = request.app.state.api_token
    if credentials is None or not tokens_match(credentials.credentials, expected):
        if credentials is not None:
            record_auth_failure(request)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API token: send 'Authorization: Bearer <FUNNELSYNC_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
