"""GET /api/templates and /api/templates/{key}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from app.library import service

router = APIRouter(prefix="/templates", tags=["templates"])


@router.get("")
async def list_templates(niche: str | None = Query(default=None)) -> list[dict[str, Any]]:
    if niche is not None and niche not in service.niches():
        raise HTTPException(
            status_code=404, detail=f"unknown niche {niche!r}; known: {', '.join(service.niches())}"
        )
    return [service.as_json(t) for t in service.list_templates(niche)]


@router.get("/{key}")
async def get_template(key: str) -> dict[str, Any]:
    return service.as_json(service.get_template(key))
