"""A sandbox of SMS.ru's send method (https://sms.ru/api/send) with control endpoints under /_sandbox.

/sms/send takes GET query parameters or a POST form (api_id, to, msg, json, from) and answers HTTP
200 with SMS.ru's JSON shapes: a top-level error for a wrong api_id (200), no money (201, a toggle)
or no text (203); per-number results otherwise, a refusal (207 unless configured otherwise) for the
numbers told to refuse and 202 for what is not a number. Without json=1 it answers SMS.ru's plain
text format. Faults make the next requests answer HTTP 500, code 220 or hang.

Control endpoints:
    GET    /_sandbox/messages   the SMS taken, oldest first
    GET    /_sandbox/stats      requests seen, SMS taken, balance, and which query keys requests used
    POST   /_sandbox/config     {"api_id": ..., "no_money": bool, "balance": float,
                                 "refuse": {"79990000000": 207}}  (refuse: number -> code, merged)
    POST   /_sandbox/faults     {"kind": "http_500" | "code_220" | "hang", "count": 1, "seconds": 5}
    DELETE /_sandbox/faults     drop pending faults; hanging requests answer 503, nothing sent
    POST   /_sandbox/reset      back to the config the app was created with
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

FAULT_KINDS = ("http_500", "code_220", "hang")

# SMS.ru's texts for the codes the sandbox answers (the table on https://sms.ru/api/send).
STATUS_TEXTS = {
    200: "Неправильный api_id",
    201: "Не хватает средств на лицевом счету",
    202: "Неправильно указан номер телефона получателя, либо на него нет маршрута",
    203: "Нет текста сообщения",
    207: "На этот номер нет маршрута для доставки сообщений",
    209: "Вы добавили этот номер (или один из номеров) в стоп-лист",
    215: "Этот номер находится в стоп-листе SMS.RU (от получателя поступала жалоба на спам)",
    220: "Сервис временно недоступен, попробуйте чуть позже",
}


@dataclass
class SmsSandboxConfig:
    api_id: str = "sandbox-sms-api-id"
    balance: float = 100.0
    price: float = 1.5  # charged per SMS taken
    no_money: bool = False  # every request answers 201
    refuse: dict[str, int] = field(default_factory=dict)  # number -> per-number status code


@dataclass
class Fault:
    kind: str
    count: int
    seconds: float


@dataclass
class SmsSandbox:
    initial: SmsSandboxConfig
    config: SmsSandboxConfig = field(init=False)
    sent: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    query_keys: list[list[str]] = field(default_factory=list)  # per request: keys in its URL
    faults: list[Fault] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.config = copy.deepcopy(self.initial)

    def reset(self) -> None:
        self.release_hanging()
        self.config = copy.deepcopy(self.initial)
        self.sent.clear()
        self.query_keys.clear()
        self.requests = 0

    def release_hanging(self) -> None:
        self.faults.clear()
        self.release.set()
        self.release = asyncio.Event()

    def take_fault(self) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.count -= 1
        if fault.count <= 0:
            self.faults.pop(0)
        return fault

    def send_one(self, number: str, text: str, sender: str | None) -> dict[str, Any]:
        """One number's result: refused, or taken (recorded and charged)."""
        if not (number.isascii() and number.isdigit() and 10 <= len(number) <= 15):
            return _error(202)
        if number in self.config.refuse:
            return _error(self.config.refuse[number])
        sms_id = f"{next(self._ids):06d}-{10000000 + len(self.sent)}"
        self.sent.append({"sms_id": sms_id, "to": number, "msg": text, "from": sender})
        self.config.balance = round(self.config.balance - self.config.price, 2)
        return {"status": "OK", "status_code": 100, "sms_id": sms_id}


def _error(code: int) -> dict[str, Any]:
    return {"status": "ERROR", "status_code": code, "status_text": STATUS_TEXTS.get(code, "Ошибка")}


def _box(request: Request) -> SmsSandbox:
    box: SmsSandbox = request.app.state.sms
    return box


# --- /sms/send -------------------------------------------------------------------------------------

api = APIRouter()


@api.api_route("/sms/send", methods=["GET", "POST"])
async def sms_send(request: Request) -> Response:
    box = _box(request)
    box.requests += 1
    box.query_keys.append(sorted(request.query_params.keys()))
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({key: str(value) for key, value in (await request.form()).items()})
    fault = box.take_fault()
    if fault is not None:
        refusal = await _apply_fault(box, fault)
        if refusal is not None:
            return refusal
    return _answer(_send(box, params), as_json=params.get("json") == "1")


async def _apply_fault(box: SmsSandbox, fault: Fault) -> Response | None:
    """The fault's answer, or None to go on normally: a hang that lasted its seconds goes on and
    sends the SMS (SMS.ru may carry out a request its client gave up on); one released by DELETE
    /_sandbox/faults or a reset answers 503 and sends nothing, so it cannot leak into what a test
    looks at next."""
    if fault.kind == "http_500":
        return PlainTextResponse("Internal Server Error", status_code=500)
    if fault.kind == "code_220":
        return JSONResponse(_error(220))
    try:
        async with asyncio.timeout(fault.seconds):
            await box.release.wait()
    except TimeoutError:
        return None
    return PlainTextResponse("released by the sandbox's control endpoint", status_code=503)


def _send(box: SmsSandbox, params: dict[str, str]) -> dict[str, Any]:
    if params.get("api_id") != box.config.api_id:
        return _error(200)
    if box.config.no_money:
        return _error(201)
    text = params.get("msg", "")
    if not text:
        return _error(203)
    numbers = [number.strip() for number in params.get("to", "").split(",") if number.strip()]
    if not numbers:
        return _error(202)
    results = {number: box.send_one(number, text, params.get("from")) for number in numbers}
    return {"status": "OK", "status_code": 100, "sms": results, "balance": box.config.balance}


def _answer(body: dict[str, Any], *, as_json: bool) -> Response:
    if as_json:
        return JSONResponse(body)
    # SMS.ru's plain format: the request's code, then per number its sms_id or error code, balance.
    lines = [str(body["status_code"])]
    if body["status"] == "OK":
        for result in body["sms"].values():
            lines.append(str(result.get("sms_id", result["status_code"])))
        lines.append(f"balance={body['balance']}")
    return PlainTextResponse("\n".join(lines))


# --- /_sandbox -------------------------------------------------------------------------------------

control = APIRouter(prefix="/_sandbox")


@control.get("/messages")
async def messages(request: Request) -> list[dict[str, Any]]:
    return _box(request).sent


@control.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    box = _box(request)
    return {
        "requests": box.requests,
        "sent": len(box.sent),
        "balance": box.config.balance,
        "query_keys": box.query_keys,
    }


@control.post("/config")
async def change_config(request: Request) -> Response:
    spec = await request.json()
    config = _box(request).config
    if "api_id" in spec:
        config.api_id = str(spec["api_id"])
    if "no_money" in spec:
        config.no_money = bool(spec["no_money"])
    if "balance" in spec:
        config.balance = float(spec["balance"])
    config.refuse.update({str(number): int(code) for number, code in spec.get("refuse", {}).items()})
    return JSONResponse({"ok": True})


@control.post("/faults")
async def add_fault(request: Request) -> Response:
    spec = await request.json()
    kind = str(spec.get("kind", ""))
    if kind not in FAULT_KINDS:
        return JSONResponse({"error": f"unknown fault kind {kind!r}", "kinds": FAULT_KINDS}, status_code=400)
    fault = Fault(kind, int(spec.get("count", 1)), float(spec.get("seconds", 5.0)))
    _box(request).faults.append(fault)
    return JSONResponse({"ok": True})


@control.delete("/faults")
async def clear_faults(request: Request) -> dict[str, Any]:
    _box(request).release_hanging()
    return {"ok": True}


@control.post("/reset")
async def reset(request: Request) -> dict[str, Any]:
    _box(request).reset()
    return {"ok": True}


def create_sms_sandbox_app(config: SmsSandboxConfig | None = None) -> FastAPI:
    app = FastAPI(title="SMS.ru sandbox")
    app.state.sms = SmsSandbox(config or SmsSandboxConfig())
    app.include_router(api)
    app.include_router(control)
    return app
