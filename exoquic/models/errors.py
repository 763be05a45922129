"""Errors raised while finding and loading models."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every model-loading error."""


class ModelLoadError(ModelError):
    """A model file is missing, corrupt, truncated or of an unsupported kind.

    The message names the file and what is wrong with it.
    """


class UnknownModelError(ModelError, KeyError):
    """A model id is not in the registry (the message lists the known ids)."""

    def __str__(self) -> str:
        # KeyError's str() wraps the message in quotes; show it as written.
        return str(self.args[0]) if self.args else ""


class ChatTemplateError(ModelError, ValueError):
    """A chat template is invalid, or rejected the messages (its `raise_exception`)."""


class MessagesRejectedError(ChatTemplateError):
    """The chat template refused the conversation through its `raise_exception`
    (e.g. Gemma's "System role not supported", or roles that do not alternate).

    The client must change the messages: the API answers 400, quoting the
    template's own message.
    """
