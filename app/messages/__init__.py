"""Messages to clients (issue #13): channel accounts per connection, the message outbox and log,
opt-outs, and the contacts cached with the mirror."""
