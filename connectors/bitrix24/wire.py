"""Bitrix24 wire helpers shared by the client: PHP-style query strings for `batch` commands.

Batch commands are strings `method?query` that the portal parses with PHP's parse_str, so nested
params use bracket keys (`filter[>ID]=5`, `select[0]=ID`). Booleans and None must not go out as
Python's "True"/"None" (a known fast_bitrix24 pitfall, issues #156/#235/#265): booleans become 1/0
and None an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    else:
        out.append((prefix, _scalar(value)))


def encode_query(params: Mapping[str, Any]) -> str:
    """`{"filter": {">ID": 5}}` -> `filter[%3EID]=5` (keys and values percent-encoded, brackets kept).

    A value that is a `$result[...]` batch reference is sent unencoded so the portal recognises it;
    it only contains characters that are safe in a query string anyway.
    """
    pairs: list[tuple[str, str]] = []
    _flatten("", params, pairs)
    parts = []
    for key, value in pairs:
        encoded_value = value if value.startswith("$result[") else quote(value, safe="")
        parts.append(f"{quote(key, safe='[]')}={encoded_value}")
    return "&".join(parts)


def command(method: str, params: Mapping[str, Any]) -> str:
    return f"{method}?{encode_query(params)}"
