"""API-token auth for /api and the dashboard, and encryption of CRM credentials at rest.

For the embedded default (no FUNNELSYNC_API_TOKEN / FUNNELSYNC_SECRET_KEY) both secrets are
generated once into files under the data folder with mode 0600, so `make demo` works with no set-up
and the secrets never enter the repository, the environment dump or a log line.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated

from cryptography.fernet import Fernet, InvalidToken
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings

API_TOKEN_FILE = "api-token"
SECRET_KEY_FILE = "secret.key"


def read_or_create_secret(path: Path, make: str) -> str:
    """Read a secret file, creating it atomically with mode 0600 on first use."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(make)
    return make


def api_token(settings: Settings) -> str:
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    return read_or_create_secret(settings.data_dir / API_TOKEN_FILE, secrets.token_urlsafe(32))


def fernet(settings: Settings) -> Fernet:
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value()
    else:
        key = read_or_create_secret(settings.data_dir / SECRET_KEY_FILE, Fernet.generate_key().decode())
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


_bearer = HTTPBearer(auto_error=False)


async def require_api_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin API guard: `Authorization: Bearer <FUNNELSYNC_API_TOKEN>`."""
    expected: str = request.app.state.api_token
    if credentials is None or not tokens_match(credentials.credentials, expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API token: send 'Authorization: Bearer <FUNNELSYNC_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
