"""Debian's Chromium as the browser tests and docs/screenshots.py launch it (no pytest here)."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("FUNNELSYNC_CHROMIUM", "/usr/bin/chromium"))
# Root in CI needs --no-sandbox; the closed network here refuses Chromium's background connections,
# so everything that phones home is switched off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
