"""Funnels domain."""
