"""Error bodies exactly as amoCRM sends them: problem+json from the API, HTML from the gateway."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

PROBLEM = "application/problem+json"
HAL = "application/hal+json"


def _html(code: int, reason: str) -> str:
    # nginx's stock error page: what amoCRM's gateway returns for 429 and the account block (403).
    return (
        f"<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def html_error(code: int, reason: str) -> Response:
    return Response(_html(code, reason), status_code=code, media_type="text/html")


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail}
    body.update(extra)
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=PROBLEM)


def hal(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=HAL)


def no_content() -> Response:
    return Response(status_code=204)


def not_found(detail: str = "Not Found") -> Response:
    return problem(404, "Not Found", detail)


def oauth_problem(status: int, title: str, detail: str, hint: str | None = None) -> Response:
    body: dict[str, Any] = {}
    if hint:
        body["hint"] = hint
    body.update(
        {
            "title": title,
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status,
            "detail": detail,
        }
    )
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=PROBLEM)


class ValidationFailed(Exception):
    """Raised by handlers; rendered as the documented 400 body with `validation-errors`."""

    def __init__(self, errors: dict[str, list[dict[str, str]]]) -> None:
        super().__init__("Request validation failed")
        self.errors = errors

    def response(self) -> Response:
        return problem(
            400,
            "Bad Request",
            "Request validation failed",
            **{
                "validation-errors": [
                    {"request_id": rid, "errors": errs} for rid, errs in self.errors.items()
                ]
            },
        )


class Errors:
    """Collects validation errors per item (keyed by the item's request_id) for one request."""

    def __init__(self) -> None:
        self.by_item: dict[str, list[dict[str, str]]] = {}

    def add(self, request_id: str, path: str, code: str, detail: str) -> None:
        self.by_item.setdefault(request_id, []).append({"code": code, "path": path, "detail": detail})

    def choice(self, request_id: str, path: str) -> None:
        self.add(request_id, path, "NotSupportedChoice", "The value you selected is not a valid choice.")

    def blank(self, request_id: str, path: str) -> None:
        self.add(request_id, path, "NotBlank", "This value should not be blank.")

    def type(self, request_id: str, path: str, kind: str) -> None:
        self.add(request_id, path, "InvalidType", f"This value should be of type {kind}.")

    def raise_if_any(self) -> None:
        if self.by_item:
            raise ValidationFailed(self.by_item)


def request_ids(items: list[Any]) -> list[str]:
    """amoCRM echoes each item's `request_id`; without one, the item's index is used."""
    out = []
    for index, item in enumerate(items):
        rid = item.get("request_id") if isinstance(item, dict) else None
        out.append(str(rid) if rid is not None else str(index))
    return out
