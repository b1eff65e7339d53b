"""Sandboxes of the message channels (a real SMTP server that keeps what it receives, a Telegram Bot
API emulator, and the other channels' own), each with control endpoints under /_sandbox like the CRM
sandboxes. Development code, like the CRM sandboxes: the runtime package and the image leave it out."""
