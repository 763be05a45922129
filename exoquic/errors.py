"""Errors every layer may raise to the command line (dependency-free)."""

from __future__ import annotations


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a trio nursery's group wraps (through nested groups of one),
    or the group itself when it holds several."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class StartupError(Exception):
    """A mistake in how a node was started (a port in use, an unreadable file, a
    bad option): the message says what is wrong and what to do, in one line."""
