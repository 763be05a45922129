"""Errors in the OpenAI error shape: `{"error": {message, type, param, code}}`.

The official clients pick their exception class from the HTTP status (400
BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError...) and show `message`, so every refusal carries an honest
status and a message that says what to change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class APIError(Exception):
    """A refusal sent to the client as an OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})  # sent with the response, e.g. Retry-After

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> str:
        return json.dumps(self.body())


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a request the client must change."""
    return APIError(400, message, param=param, code=code)
