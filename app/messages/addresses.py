"""One spelling per address, so an opt-out recorded from a link, a /stop command or an operator
matches the address a later message goes to, however the CRM wrote it."""

from __future__ import annotations

from email.utils import parseaddr

from connectors.channels.base import PermanentChannelError
from connectors.channels.sms import normalise_phone


def normalise(channel: str, address: str) -> str:
    """email: the bare address, lower case; sms: the digits of the international number (an address
    that is not a phone number stays as written, stripped); telegram: the chat id or the @username
    in lower case; webhook: as given."""
    address = address.strip()
    if channel == "email":
        return (parseaddr(address)[1] or address).lower()
    if channel == "sms":
        try:
            return normalise_phone(address)
        except PermanentChannelError:
            return address
    if channel == "telegram":
        return address.lower() if address.startswith("@") else address
    return address
