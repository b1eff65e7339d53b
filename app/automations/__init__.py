"""Template automations: the pure core (which actions are due, when a message may go out, the
qualification conversation). The service around it reads the database and queues the effects."""
