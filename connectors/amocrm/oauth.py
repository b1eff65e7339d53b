"""amoCRM authorisation: long-lived tokens and OAuth 2.0 with single-use, rotating refresh tokens.

Rules this module keeps (docs/crm/amocrm.md §2):
- The access token lives 24 hours; it is refreshed ahead of expiry and once after a 401.
- A refresh token works once: the refresh response carries a new pair and the old refresh token is
  dead. So refreshes of one account are serialised (one lock per account in this process; across
  processes the account lease keeps one worker per account), and a caller whose token was already
  replaced by a concurrent refresh just uses the new one.
- The new pair is handed to the TokenSaver BEFORE the new access token is used: if the process dies
  right after a refresh, the stored refresh token is the live one. A saver failure keeps the new pair
  pending (it is the only valid one) and every call tries to save it again before using it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import AuthError, CRMError, TokenSaver, TokenSet

TOKEN_PATH = "/oauth2/access_token"
# Refresh this long before the stated expiry, so a request never leaves with a token that dies on
# the way (clock skew, slow networks).
EXPIRY_MARGIN = timedelta(seconds=60)

# (account key, event loop) -> lock. Keyed by loop because an asyncio.Lock belongs to one loop.
_locks: weakref.WeakValueDictionary[tuple[str, int], asyncio.Lock] = weakref.WeakValueDictionary()


def _lock_for(account_key: str) -> asyncio.Lock:
    key = (account_key, id(asyncio.get_running_loop()))
    lock = _locks.get(key)
    if lock is None:
        lock = asyncio.Lock()
        _locks[key] = lock
    return lock


@dataclass(frozen=True)
class OAuthApp:
    """The integration's credentials (amoCRM integration settings → Keys)."""

    client_id: str
    client_secret: str
    redirect_uri: str


# Posts a JSON body to /oauth2/access_token and returns the parsed answer (errors already mapped).
TokenRequest = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def tokens_from_response(body: dict[str, Any], now: datetime | None = None) -> TokenSet:
    """TokenSet from the token endpoint's answer: {token_type, expires_in, access_token, refresh_token}."""
    try:
        access = str(body["access_token"])
        refresh = str(body["refresh_token"])
        expires_in = int(body.get("expires_in", 86_400))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuthError(f"the token endpoint answered without tokens: {str(body)[:200]}") from exc
    issued = now or datetime.now(UTC)
    extra = {k: v for k, v in body.items() if k in ("token_type", "server_time")}
    return TokenSet(access, refresh, issued + timedelta(seconds=expires_in), extra)


class LongLivedAuth:
    """A private integration's long-lived token: nothing to refresh; a 401 means it was revoked or
    reached the end of the validity the administrator chose."""

    can_refresh = False

    def __init__(self, token: str) -> None:
        self._token = token

    async def access_token(self) -> str:
        return self._token

    async def refresh(self, failed_token: str | None) -> None:
        raise AuthError("the long-lived token was refused; issue a new one in the integration's settings")

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        return False


class OAuthAuth:
    can_refresh = True

    def __init__(
        self,
        account_key: str,
        app: OAuthApp,
        tokens: TokenSet,
        saver: TokenSaver,
        request: TokenRequest,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.account_key = account_key
        self.app = app
        self.tokens = tokens
        self._saver = saver
        self._request = request
        self._clock = clock
        self._pending: TokenSet | None = None
        self.refreshes = 0  # refreshes this object performed (observability, tests)

    async def access_token(self) -> str:
        """The token to send now: saves a pending pair first, refreshes an expired one."""
        if self._pending is not None or self._expiring(EXPIRY_MARGIN):
            await self.refresh(self.tokens.access_token)
        return self.tokens.access_token

    def _expiring(self, within: timedelta) -> bool:
        expires = self.tokens.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return expires - within <= self._clock()

    async def refresh_if_expiring(self, within: timedelta) -> bool:
        """Refresh when the access token expires within `within` (e.g. a keep-alive job: refresh
        tokens also lapse after 3 months unused). Returns whether a refresh happened."""
        if not self._expiring(within) and self._pending is None:
            return False
        async with _lock_for(self.account_key):
            if not self._expiring(within) and self._pending is None:
                return False
            await self._refresh_locked()
            return True

    async def refresh(self, failed_token: str | None) -> None:
        """Replace `failed_token` (the token a request was refused with or found expired). When a
        concurrent caller already replaced it, do nothing: its new pair is ours too."""
        async with _lock_for(self.account_key):
            if (
                self._pending is None
                and failed_token is not None
                and failed_token != self.tokens.access_token
            ):
                return
            if self._pending is None and failed_token is None and not self._expiring(EXPIRY_MARGIN):
                return
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        if self._pending is None:
            answer = await self._request(
                {
                    "client_id": self.app.client_id,
                    "client_secret": self.app.client_secret,
                    "grant_type": "refresh_token",
                    "refresh_token": self.tokens.refresh_token,
                    "redirect_uri": self.app.redirect_uri,
                }
            )
            self._pending = tokens_from_response(answer, self._clock())
            self.refreshes += 1
        try:
            await self._saver(self._pending)
        except Exception as exc:
            raise CRMError(
                f"amoCRM rotated the tokens but saving them failed ({exc!r}); the new pair is kept in "
                "memory and saving is retried before its first use"
            ) from exc
        self.tokens, self._pending = self._pending, None


async def exchange_code(request: TokenRequest, app: OAuthApp, code: str) -> TokenSet:
    """Authorization code (valid 20 minutes, single use) -> the first token pair."""
    answer = await request(
        {
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uri,
        }
    )
    return tokens_from_response(answer)
