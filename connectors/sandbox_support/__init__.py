"""What the CRM sandboxes share: a renamed account's redirects (moves.py) and the kit each sandbox
gives the demo (kit.py). Development code, like the sandboxes: the runtime package and the image
leave it out (pyproject's packages.find exclude, .dockerignore)."""
