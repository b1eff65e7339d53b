"""Deals domain."""
