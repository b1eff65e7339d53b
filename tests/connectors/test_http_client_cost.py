"""What every CRM request costs on the client side, beyond the bytes on the wire."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from fastapi import FastAPI

from tests.support import web
from tests.support.server import serve_asgi


class _ImportSearches:
    """A meta path finder that records each module the import system has to search for."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        self.names.append(name)
        return None  # the real finders carry on


async def test_requests_make_no_import_searches() -> None:
    """httpcore asks sniffio for the running event loop on every lock and cancel shield; were sniffio
    missing (it is a dependency for this reason), each ask would search sys.path for it again."""
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    searches = _ImportSearches()
    with serve_asgi(app) as url:
        async with web.async_client(base_url=url) as client:
            assert (await client.get("/ping")).json() == {"ok": True}  # first use may import
            sys.meta_path.insert(0, searches)
            try:
                for _ in range(5):
                    assert (await client.get("/ping")).status_code == 200
            finally:
                sys.meta_path.remove(searches)
    assert searches.names == []
