"""The Telegram qualification bot (issue #13): `funnelsync bot telegram CONN TEMPLATE`."""
