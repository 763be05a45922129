"""Errors every layer may raise to the command line (dependency-free)."""

from __future__ import annotations


class StartupError(Exception):
    """A mistake in how a node was started (a port in use, an unreadable file, a
    bad option): the message says what is wrong and what to do, in one line."""
