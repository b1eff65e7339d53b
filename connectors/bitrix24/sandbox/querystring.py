"""PHP parse_str for the sandbox: batch commands and form bodies use bracket keys."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[]*)((?:\[[^\]]*\])*)")
_PART = re.compile(r"\[([^\]]*)\]")


def _listify(value: Any) -> Any:
    """PHP arrays with keys 0..n-1 are lists in JSON: convert so handlers see what JSON clients send."""
    if isinstance(value, dict):
        converted = {k: _listify(v) for k, v in value.items()}
        keys = list(converted)
        if keys and all(k.isdigit() for k in keys) and sorted(int(k) for k in keys) == list(range(len(keys))):
            return [converted[str(i)] for i in range(len(keys))]
        return converted
    return value


def parse_php_query(query: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for raw_key, value in parse_qsl(query, keep_blank_values=True):
        match = _KEY.match(raw_key)
        if not match or not match.group(1):
            continue
        parts = [match.group(1), *_PART.findall(match.group(2))]
        node: dict[str, Any] = result
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":  # `a[]=x` appends
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    listified = _listify(result)
    assert isinstance(listified, dict)
    return listified
