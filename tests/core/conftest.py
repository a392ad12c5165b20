"""Shared fixtures for the engine tests: the packet cases live in packets.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
