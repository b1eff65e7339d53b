"""The funnel template library as the service exposes it (CLI and API share this service)."""
