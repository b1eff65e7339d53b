"""Alembic migrations (shipped as a package so an installed FunnelSync can upgrade its database)."""
