"""Rules domain."""
