"""The HTTP app factory: OpenAI-compatible API and the chat UI on Quart-Trio."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from quart import Response, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from exoquic.api.errors import APIError
from exoquic.api.openai_routes import blueprint as openai_blueprint
from exoquic.api.security import ApiSecurity
from exoquic.orchestration.node import Node

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
STATIC_DIR = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/health", "/favicon.ico")


def create_app(node: Node, security: ApiSecurity | None = None) -> QuartTrio:
    app = QuartTrio("exoquic", static_folder=None)
    app.config["EXOQUIC_NODE"] = node
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_blueprint(openai_blueprint)
    policy = security or ApiSecurity()

    @app.before_request
    async def check_caller() -> Response | None:
        host = request.headers.get("Host")
        if not policy.host_allowed(host):
            return error_response(
                APIError(
                    403,
                    f"this node does not answer to host {host!r}",
                    type="permission_error",
                    code="host_not_allowed",
                )
            )
        origin = request.headers.get("Origin")
        if not policy.origin_allowed(origin, host):
            return error_response(
                APIError(
                    403,
                    f"cross-origin requests from {origin} are not allowed (see --cors-origin)",
                    type="permission_error",
                    code="origin_not_allowed",
                )
            )
        public = request.path in PUBLIC_PATHS or request.path.startswith("/static/")
        if not public and not policy.key_matches(request.headers.get("Authorization")):
            return error_response(
                APIError(
                    401,
                    "a valid API key is required: send 'Authorization: Bearer <key>'",
                    type="invalid_request_error",
                    code="invalid_api_key",
                )
            )
        return None

    @app.after_request
    async def cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin in policy.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.route("/v1/<path:_any>", methods=["OPTIONS"])
    async def preflight(_any: str) -> Response:
        return Response("", status=204)

    @app.get("/")
    async def index() -> Response:
        return await send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return await send_from_directory(STATIC_DIR, name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": node.model_id, "active_requests": node.active_requests}

    @app.get("/v1/topology")
    async def topology() -> dict[str, Any]:
        return node.topology()

    @app.errorhandler(APIError)
    async def api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = error.name.lower().replace(" ", "_")
        return error_response(APIError(status, error.description or error.name, code=code))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(APIError(500, f"internal error: {error}", type="server_error"))

    return app


def error_response(error: APIError) -> Response:
    return Response(json.dumps(error.body()), status=error.status, content_type="application/json")
