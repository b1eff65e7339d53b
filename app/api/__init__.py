"""HTTP API wiring."""
