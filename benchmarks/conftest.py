"""Shared benchmark fixtures: servers and flows made once, outside the timed code."""
