"""The HTTP app factory: OpenAI-compatible API on Quart-Trio."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from exoquic.api.errors import APIError
from exoquic.api.openai_routes import blueprint as openai_blueprint
from exoquic.orchestration.node import Node

MAX_BODY_BYTES = 4 * 1024 * 1024


def create_app(node: Node) -> QuartTrio:
    app = QuartTrio("exoquic")
    app.config["EXOQUIC_NODE"] = node
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.register_blueprint(openai_blueprint)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": node.model_id, "active_requests": node.active_requests}

    @app.errorhandler(APIError)
    async def api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return error_response(
            APIError(
                status, error.description or error.name, code=error.name.lower().replace(" ", "_")
            )
        )

    return app


def error_response(error: APIError) -> Response:
    import json

    return Response(json.dumps(error.body()), status=error.status, content_type="application/json")
