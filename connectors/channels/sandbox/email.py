"""Email sandbox: a real SMTP server (aiosmtpd) that keeps every message it accepts in memory, and a
FastAPI app to read them back and to script the server's refusals. Both run on one event loop: the
app's lifespan starts the SMTP listener, so one uvicorn process (or a test's `serve_asgi`) is the
whole sandbox.

Control endpoints (same style as the CRM sandboxes):
  GET  /_sandbox/smtp       where the SMTP server listens: {"host", "port"}
  GET  /_sandbox/messages   what was "sent", parsed: from, to, subject, text, message_id, date,
                            plus the SMTP envelope (mail_from, rcpt_tos); `?to=` filters by recipient
  POST /_sandbox/faults     {"kind": "refuse_recipient", "recipient": "a@b.ru"} answers RCPT with 550
                            (or "code"/"text" given) until reset; {"kind": "reply", "code": 451,
                            "count": 2, "stage": "mail"|"rcpt"|"data"} answers that stage of the next
                            `count` messages with `code`
  DELETE /_sandbox/faults   drop every fault
  POST /_sandbox/reset      drop messages and faults
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("funnelsync.sandbox.email")

STAGES = ("mail", "rcpt", "data")
DEFAULT_REPLIES = {
    "mail": "4.3.0 Temporary system problem, try again later",
    "rcpt": "4.2.1 Mailbox temporarily unavailable, try again later",
    "data": "4.3.0 Temporary local problem, try again later",
}
REFUSED_TEXT = "5.1.1 Mailbox unavailable: user unknown"


@dataclass
class EmailSandboxConfig:
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 0  # 0: any free port; the bound one is Mailbox.smtp_port
    hostname: str = "smtp.sandbox.test"  # the name the server greets with
    # When set, AUTH must give exactly these (a wrong pair gets 535); when not, any login passes.
    # Sending without AUTH is always allowed, like a relay on a private network.
    username: str | None = None
    password: str | None = None


@dataclass
class ReceivedEmail:
    mail_from: str
    rcpt_tos: list[str]
    sender: str  # the From header, decoded
    to: str
    subject: str
    text: str
    message_id: str
    date: str
    received_at: str

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("sender")
        return data


@dataclass
class ReplyFault:
    code: int
    text: str
    stage: str
    remaining: int


@dataclass
class Mailbox:
    """Everything the SMTP server accepted, and the refusals it was told to give."""

    config: EmailSandboxConfig
    messages: list[ReceivedEmail] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # lower-cased address -> reply line
    faults: list[ReplyFault] = field(default_factory=list)
    smtp_port: int | None = None

    def reset(self) -> None:
        self.messages.clear()
        self.clear_faults()

    def clear_faults(self) -> None:
        self.refused.clear()
        self.faults.clear()

    def fault_reply(self, stage: str) -> str | None:
        """The reply a scripted fault gives at this stage of a message, counting it off."""
        for fault in self.faults:
            if fault.stage == stage and fault.remaining > 0:
                fault.remaining -= 1
                return f"{fault.code} {fault.text}"
        return None

    def add_fault(self, spec: dict[str, Any]) -> str | None:
        """Apply a POST /_sandbox/faults body; what is wrong with it, or None when applied."""
        kind = spec.get("kind")
        if kind == "refuse_recipient" and spec.get("recipient"):
            code = int(spec.get("code", 550))
            self.refused[str(spec["recipient"]).lower()] = f"{code} {spec.get('text') or REFUSED_TEXT}"
            return None
        if kind == "reply":
            stage = str(spec.get("stage", "data"))
            code = int(spec.get("code", 451))
            if stage not in STAGES or not 400 <= code < 600:
                return f"stage must be one of {STAGES} and code a 4xx or 5xx reply"
            text = str(spec.get("text") or DEFAULT_REPLIES[stage])
            self.faults.append(ReplyFault(code, text, stage, int(spec.get("count", 1))))
            return None
        return 'give {"kind": "refuse_recipient", "recipient": ...} or {"kind": "reply", "code": 451, ...}'

    def receive(self, envelope: Envelope) -> ReceivedEmail:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        received = ReceivedEmail(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            sender=str(parsed.get("From", "")),
            to=str(parsed.get("To", "")),
            subject=str(parsed.get("Subject", "")),
            # Lines travel as CRLF (RFC 5321 §2.3.8); a reader sees plain newlines.
            text=body.get_content().replace("\r\n", "\n") if body is not None else "",
            message_id=str(parsed.get("Message-ID", "")),
            date=str(parsed.get("Date", "")),
            received_at=datetime.now(UTC).isoformat(),
        )
        self.messages.append(received)
        return received


class SmtpHandler:
    """aiosmtpd handler hooks: each may answer with a scripted fault instead of 250."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        reply = self.mailbox.fault_reply("mail")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.mailbox.refused.get(address.lower()) or self.mailbox.fault_reply("rcpt")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.mailbox.fault_reply("data")
        if reply:
            return reply
        received = self.mailbox.receive(envelope)
        log.info("accepted %s for %s", received.message_id, ", ".join(received.rcpt_tos))
        return "250 2.0.0 OK: queued"


def authenticator(config: EmailSandboxConfig) -> Any:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if config.username is None:
            return AuthResult(success=True)
        given = auth_data if isinstance(auth_data, LoginPassword) else None
        ok = (
            given is not None
            and given.login.decode("utf-8", "replace") == config.username
            and given.password.decode("utf-8", "replace") == (config.password or "")
        )
        # handled=False: aiosmtpd answers a failure with 535 5.7.8, as real servers do.
        return AuthResult(success=ok, handled=False)

    return check


async def start_smtp(mailbox: Mailbox) -> asyncio.Server:
    """Listen for SMTP on this loop; records the bound port in `mailbox.smtp_port`."""
    config = mailbox.config
    loop = asyncio.get_running_loop()
    handler = SmtpHandler(mailbox)

    def protocol() -> SMTP:
        return SMTP(
            handler,
            hostname=config.hostname,
            enable_SMTPUTF8=True,  # accept non-ASCII addresses, as current mail servers do
            auth_require_tls=False,  # a loopback sandbox has no certificate to offer
            authenticator=authenticator(config),
            loop=loop,
        )

    server = await loop.create_server(protocol, config.smtp_host, config.smtp_port)
    mailbox.smtp_port = int(server.sockets[0].getsockname()[1])
    return server


def create_email_sandbox_app(config: EmailSandboxConfig | None = None) -> FastAPI:
    mailbox = Mailbox(config or EmailSandboxConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = await start_smtp(mailbox)
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()

    app = FastAPI(title="Email (SMTP) sandbox", lifespan=lifespan)
    app.state.mailbox = mailbox
    install_control(app, mailbox)
    return app


def install_control(app: FastAPI, mailbox: Mailbox) -> None:
    @app.get("/_sandbox/smtp")
    async def smtp_address() -> dict[str, Any]:
        return {"host": mailbox.config.smtp_host, "port": mailbox.smtp_port}

    @app.get("/_sandbox/messages")
    async def messages(to: str | None = None) -> dict[str, Any]:
        wanted = to.lower() if to else None
        found = [
            m.as_json()
            for m in mailbox.messages
            if wanted is None or wanted in (r.lower() for r in m.rcpt_tos)
        ]
        return {"messages": found}

    @app.post("/_sandbox/faults")
    async def add_fault(request: Request) -> JSONResponse:
        problem = mailbox.add_fault(await request.json())
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        return JSONResponse({"ok": True})

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, Any]:
        mailbox.clear_faults()
        return {"ok": True}

    @app.post("/_sandbox/reset")
    async def reset() -> dict[str, Any]:
        mailbox.reset()
        return {"ok": True}


def run_sandbox(port: int, smtp_port: int = 1025, host: str = "127.0.0.1") -> None:
    """Serve the sandbox with uvicorn: control API on `port`, SMTP on `smtp_port`."""
    import uvicorn

    config = EmailSandboxConfig(smtp_host=host, smtp_port=smtp_port)
    print(f"Email sandbox: SMTP on {host}:{smtp_port}, control on http://{host}:{port}/_sandbox/messages")
    uvicorn.run(create_email_sandbox_app(config), host=host, port=port, log_level="info")
