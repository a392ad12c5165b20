"""Shared fixtures for the engine tests: the packet cases live in packets.py."""
