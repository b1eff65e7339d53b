"""SmtpChannel against the SMTP sandbox (a real SMTP server on loopback): what arrives, the stable
Message-ID, and each reply class mapped onto the channel errors. The sandbox itself is checked with
an independent client, the standard library's smtplib."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage

import pytest

from connectors.channels.base import (
    ChannelAccountRefused,
    OutgoingMessage,
    PermanentChannelError,
    RecipientUnreachable,
    TemporaryChannelError,
)
from connectors.channels.email import SmtpChannel, message_id_for
from tests.support.channels import SENDER, SmtpSandbox, running_smtp_sandbox
from tests.support.server import free_port

SUBJECT = "Ваша заявка №42 принята"
TEXT = "Здравствуйте, Иван!\nМенеджер свяжется с вами сегодня.\n— Команда «Воронка»"
CLIENT = "ivan.petrov@example.ru"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SmtpSandbox]:
    with running_smtp_sandbox() as box:
        yield box


@pytest.fixture(autouse=True)
def clean(sandbox: SmtpSandbox) -> None:
    sandbox.reset()


def outgoing(key: str = "cmd-1", recipient: str = CLIENT) -> OutgoingMessage:
    return OutgoingMessage(key=key, recipient=recipient, text=TEXT, subject=SUBJECT)


async def test_a_russian_message_arrives_intact_with_its_message_id(sandbox: SmtpSandbox) -> None:
    receipt = await sandbox.channel().send(outgoing(recipient=f"Иван Петров <{CLIENT}>"))

    [received] = sandbox.messages()
    assert received["subject"] == SUBJECT
    assert received["text"].rstrip("\n") == TEXT
    assert received["from"] == SENDER
    assert received["to"] == f"Иван Петров <{CLIENT}>"
    assert received["rcpt_tos"] == [CLIENT]
    assert received["mail_from"] == "noreply@funnelsync.test"
    assert received["date"], "a Date header is required (RFC 5322 §3.6)"
    assert receipt.provider_id == received["message_id"] == message_id_for("cmd-1", SENDER)
    assert receipt.provider_id.endswith("@funnelsync.test>")


async def test_a_repeat_of_the_same_command_carries_the_same_message_id(sandbox: SmtpSandbox) -> None:
    channel = sandbox.channel()
    first = await channel.send(outgoing(key="cmd-7"))
    repeat = await channel.send(outgoing(key="cmd-7"))
    other = await channel.send(outgoing(key="cmd-8"))

    assert first.provider_id == repeat.provider_id != other.provider_id
    assert [m["message_id"] for m in sandbox.messages()] == [first.provider_id] * 2 + [other.provider_id]


def test_the_message_id_names_the_senders_domain() -> None:
    assert message_id_for("k", "Воронка <noreply@пример.рф>").endswith("@xn--e1afmkfd.xn--p1ai>")
    assert message_id_for("k", "a@b.ru") == message_id_for("k", "Other Name <a@b.ru>")
    with pytest.raises(ValueError):
        SmtpChannel("127.0.0.1", 25, sender="no-domain")


async def test_a_refused_mailbox_is_unreachable(sandbox: SmtpSandbox) -> None:
    sandbox.fault("refuse_recipient", recipient=CLIENT)

    with pytest.raises(RecipientUnreachable) as caught:
        await sandbox.channel().send(outgoing())

    assert caught.value.code == "550"
    assert CLIENT in caught.value.provider_text
    assert sandbox.messages() == []


@pytest.mark.parametrize(("stage", "code"), [("mail", 451), ("rcpt", 450), ("data", 452)])
async def test_a_4xx_reply_is_temporary_and_the_next_send_passes(
    sandbox: SmtpSandbox, stage: str, code: int
) -> None:
    sandbox.fault("reply", code=code, stage=stage, count=1)
    channel = sandbox.channel()

    with pytest.raises(TemporaryChannelError) as caught:
        await channel.send(outgoing())
    assert caught.value.code == str(code)
    assert sandbox.messages() == []

    await channel.send(outgoing())
    assert len(sandbox.messages()) == 1


async def test_a_5xx_reply_that_is_not_about_the_recipient_is_permanent(sandbox: SmtpSandbox) -> None:
    sandbox.fault("reply", code=554, stage="data", text="5.7.1 Message rejected as spam")

    with pytest.raises(PermanentChannelError) as caught:
        await sandbox.channel().send(outgoing())

    assert not isinstance(caught.value, RecipientUnreachable)
    assert caught.value.code == "554"
    assert "rejected as spam" in caught.value.provider_text


async def test_a_malformed_address_is_unreachable_without_a_session(sandbox: SmtpSandbox) -> None:
    for bad in ("not-an-address", "a@b.ru\r\nBcc: victim@example.ru", "two words@example.ru"):
        with pytest.raises(RecipientUnreachable):
            await sandbox.channel().send(outgoing(recipient=bad))
    assert sandbox.messages() == []


async def test_login_with_the_right_password_sends_and_a_wrong_one_is_permanent() -> None:
    with running_smtp_sandbox(username="mailer", password="s3cret") as box:
        await box.channel(username="mailer", password="s3cret").send(outgoing())
        assert len(box.messages()) == 1

        with pytest.raises(PermanentChannelError) as caught:
            await box.channel(username="mailer", password="wrong").send(outgoing())
        assert isinstance(caught.value, ChannelAccountRefused) and caught.value.code == "535"
        assert "wrong" not in caught.value.provider_text
        assert len(box.messages()) == 1


async def test_a_server_that_is_down_is_temporary() -> None:
    channel = SmtpChannel("127.0.0.1", free_port(), sender=SENDER, timeout=5)

    with pytest.raises(TemporaryChannelError) as caught:
        await channel.send(outgoing())

    assert caught.value.code == "NETWORK"


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never greets: an SMTP server that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()


async def test_a_server_that_never_answers_is_a_temporary_timeout(silent_server: int) -> None:
    channel = SmtpChannel("127.0.0.1", silent_server, sender=SENDER, timeout=0.3)

    with pytest.raises(TemporaryChannelError) as caught:
        await channel.send(outgoing())

    assert caught.value.code == "TIMEOUT"


def test_the_sandbox_receives_what_the_standard_librarys_smtplib_sends(sandbox: SmtpSandbox) -> None:
    """Fidelity: an independent client (smtplib) gets the same parsed view as our channel does."""
    mime = EmailMessage()
    mime["From"] = "Отдел продаж <sales@example.ru>"
    mime["To"] = CLIENT
    mime["Subject"] = SUBJECT
    mime["Message-ID"] = "<stdlib-1@example.ru>"
    mime.set_content(TEXT)

    with smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        refused = client.send_message(mime)

    assert refused == {}
    [received] = sandbox.messages(to=CLIENT)
    assert received["from"] == "Отдел продаж <sales@example.ru>"
    assert received["subject"] == SUBJECT
    assert received["text"].rstrip("\n") == TEXT
    assert received["message_id"] == "<stdlib-1@example.ru>"
    assert received["mail_from"] == "sales@example.ru"


def test_smtplib_sees_the_scripted_refusal_as_a_550(sandbox: SmtpSandbox) -> None:
    sandbox.fault("refuse_recipient", recipient=CLIENT)

    with (
        smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as caught,
    ):
        client.sendmail("sales@example.ru", [CLIENT], b"Subject: hi\r\n\r\nhello\r\n")

    assert caught.value.recipients[CLIENT][0] == 550
