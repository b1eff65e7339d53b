"""Dashboard sessions held server-side, so logging out (or expiry) ends a session for good: a
copied cookie is worth nothing once its row is gone."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class DashboardSessionRow(Base):
    __tablename__ = "dashboard_sessions"

    # SHA-256 (hex) of the session id the cookie carries: the table alone never yields a cookie.
    id_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
