"""Client-facing message channels for automations (issue #13): email (SMTP), Telegram Bot API, an SMS
gateway, and outgoing webhooks signed per the Standard Webhooks spec. Wire formats live here, like
the CRM connectors'; the service decides what to send and when."""
