"""The API token's minimum length (an empty one made every forged cookie valid) and the throttle of
failed credentials, counted with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.config import MIN_API_TOKEN_LENGTH, Settings
from app.security import API_TOKEN_FILE, FailureThrottle, api_token


@pytest.mark.parametrize("token", ["", "   ", "x" * (MIN_API_TOKEN_LENGTH - 1)])
def test_a_short_api_token_is_refused_with_how_to_make_one(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(data_dir=tmp_path, api_token=SecretStr(token))
    assert "FUNNELSYNC_API_TOKEN must be at least 16 characters" in str(refused.value)
    assert "secrets.token_urlsafe(32)" in str(refused.value)


def test_a_short_token_in_the_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / API_TOKEN_FILE).write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be at least 16 characters"):
        api_token(Settings(data_dir=tmp_path))


def test_a_generated_token_and_a_long_one_are_accepted(tmp_path: Path) -> None:
    generated = api_token(Settings(data_dir=tmp_path))
    assert len(generated) >= MIN_API_TOKEN_LENGTH
    assert api_token(Settings(data_dir=tmp_path)) == generated  # kept in the file, mode 0600
    assert (tmp_path / API_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    long_token = "y" * MIN_API_TOKEN_LENGTH
    assert api_token(Settings(data_dir=tmp_path, api_token=SecretStr(long_token))) == long_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_blocks_after_the_allowed_failures_until_the_window_passes() -> None:
    clock = Clock()
    throttle = FailureThrottle(allowed=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.record_failure("10.0.0.1")
        clock.now += 10
    assert throttle.retry_after("10.0.0.1") == 30  # the first failure leaves the window at 1060
    assert throttle.retry_after("10.0.0.2") is None  # per address
    clock.now = 1060
    assert throttle.retry_after("10.0.0.1") is None
    throttle.record_failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 10  # the failures at 1010, 1020 and 1060


def test_the_throttle_forgets_quiet_addresses_when_full() -> None:
    clock = Clock()
    throttle = FailureThrottle(allowed=1, window=60, clock=clock)
    throttle.MAX_CLIENTS = 2
    throttle.record_failure("a")
    throttle.record_failure("b")
    clock.now += 61  # a and b are quiet now
    throttle.record_failure("c")
    throttle.record_failure("d")
    assert throttle.retry_after("c") is not None and throttle.retry_after("d") is not None
    assert len(throttle._failures) == 2
