"""Read models that combine several domains (a connection's sync status reads its inbox and its
mirrored deals). They live above the domains so a domain never imports one that sits above it."""
