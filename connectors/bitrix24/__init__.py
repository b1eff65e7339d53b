"""Bitrix24 connector: REST client (client.py), outbound-event parsing (events.py), emulator (sandbox/)."""
