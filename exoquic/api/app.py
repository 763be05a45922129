"""The HTTP app factory: OpenAI-compatible API and the chat UI on Quart-Trio."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from exoquic.api.admission import Admission
from exoquic.api.catalog_routes import blueprint as catalog_blueprint
from exoquic.api.errors import APIError
from exoquic.api.limits import AdmissionLimits
from exoquic.api.metrics import ApiMetrics
from exoquic.api.ollama_routes import blueprint as ollama_blueprint
from exoquic.api.openai_routes import blueprint as openai_blueprint
from exoquic.api.openapi import openapi_document
from exoquic.api.pulls import Pulls
from exoquic.api.security import ApiSecurity
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.modelset import ModelSet
from exoquic.orchestration.node import Node

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
STATIC_DIR = Path(__file__).parent / "static"
# Reachable without an API key: the UI's files (it asks for the key itself),
# liveness, and the API description.
PUBLIC_PATHS = ("/", "/health", "/openapi.json", "/favicon.ico")


def create_app(
    node: Node,
    security: ApiSecurity | None = None,
    limits: AdmissionLimits | None = None,
    models: ModelSet | None = None,
) -> QuartTrio:
    """The app serving `node`; `security` defaults to an open loopback-style policy,
    `limits` to 64 generations at once and no waiting (see `exoquic.api.admission`),
    `models` to `node`'s model alone (with a ModelSet that has a catalog, cached
    models load on demand)."""
    app = QuartTrio("exoquic", static_folder=None)
    admission = Admission(limits)
    app.config["EXOQUIC_NODE"] = node
    app.config["EXOQUIC_MODELS"] = models or ModelSet(node)
    app.config["EXOQUIC_ADMISSION"] = admission
    metrics = ApiMetrics(node, admission)
    app.config["EXOQUIC_METRICS"] = metrics
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["RESPONSE_TIMEOUT"] = None  # streams last as long as generation does
    app.register_blueprint(openai_blueprint)
    app.register_blueprint(ollama_blueprint)
    app.register_blueprint(catalog_blueprint)
    pulls = Pulls()  # `POST /api/pull`'s downloads, stopped when the server stops
    app.config["EXOQUIC_PULLS"] = pulls
    app.after_serving(pulls.cancel_all)
    policy = security or ApiSecurity()
    _add_checks(app, policy)
    _add_info_routes(app, node, admission, policy)
    _add_metrics(app, metrics)
    _add_error_handlers(app)
    return app


def _add_checks(app: QuartTrio, policy: ApiSecurity) -> None:
    @app.before_request
    async def check_caller() -> Response | None:
        refusal = caller_refusal(policy)
        if refusal is not None:
            return error_response(refusal)
        if request.method == "OPTIONS":
            return Response("", status=204)  # a CORS preflight from an allowed origin
        return None

    @app.after_request
    async def common_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin in policy.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path == "/":
            # The UI runs only our own script and is never framed by another site.
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
            )
        return response


def _add_metrics(app: QuartTrio, metrics: ApiMetrics) -> None:
    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def count(response: Response) -> Response:
        # The route's pattern, not the path: unknown paths must not grow the label set.
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response


def caller_refusal(policy: ApiSecurity) -> APIError | None:
    """Why the current request may not proceed (see `exoquic.api.security`), or None."""
    host = request.headers.get("Host")
    if not policy.host_allowed(host):
        return APIError(
            403,
            f"this node does not answer to host {host!r}",
            type="permission_error",
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    if not policy.origin_allowed(origin, host):
        return APIError(
            403,
            f"cross-origin requests from {origin} are not allowed (see --cors-origin)",
            type="permission_error",
            code="origin_not_allowed",
        )
    public = request.path in PUBLIC_PATHS or request.path.startswith("/static/")
    preflight = request.method == "OPTIONS"  # browsers never send credentials on these
    if not (public or preflight) and not policy.key_matches(request.headers.get("Authorization")):
        return APIError(
            401,
            "this node needs its API key: send 'Authorization: Bearer <key>' with the key "
            "it was started with (its home's api_token file, made by `exoquic token`, "
            "or its EXOQUIC_API_KEY)",
            code="invalid_api_key",
        )
    return None


def _add_info_routes(app: QuartTrio, node: Node, admission: Admission, policy: ApiSecurity) -> None:
    @app.get("/")
    async def index() -> Response:
        return await send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return await send_from_directory(STATIC_DIR, name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # Liveness is public (load balancers, the UI before it has the key); the
        # model, memory and load are for key holders when a key is set.
        if not policy.key_matches(request.headers.get("Authorization")):
            return {"status": "ok"}
        return health_report(node, admission, app.config["EXOQUIC_MODELS"])

    @app.get("/v1/topology")
    async def topology() -> dict[str, Any]:
        return {**node.topology(), "admission": admission.statistics()}

    @app.get("/openapi.json")
    async def openapi() -> dict[str, Any]:
        return openapi_document()


def health_report(
    node: Node, admission: Admission, models: ModelSet | None = None
) -> dict[str, Any]:
    """Liveness plus the counters a load test watches for leaks; the KV caches
    are those of every loaded model (each has its own engine), also per model."""
    nodes = (
        {r.model_id: models.node_of(r.model_id) for r in models.residency.residents()}
        if models
        else {node.model_id: node}
    )
    caches = {model_id: cache_counts(n) for model_id, n in nodes.items()}
    return {
        "status": "ok",
        "model": node.model_id,
        "loaded_models": list(nodes),  # the default model first (see GET /api/ps)
        "engine": node.engine.name,
        "active_requests": node.active_requests,
        "kv_caches": sum(c["kv_caches"] for c in caches.values()),
        "prefix_caches": sum(c["prefix_caches"] for c in caches.values()),
        "models": caches,
        "admission": admission.statistics(),
        "rss_bytes": psutil.Process().memory_info().rss,
        "uptime_s": round(time.time() - node.started_at, 1),
    }


def cache_counts(node: Node) -> dict[str, int]:
    """`node`'s engine's KV caches: live requests' (`kv_caches`) and those kept
    for later turns (`prefix_caches`)."""
    # Engines keep one cache per request in a dict; reading its size from the
    # event loop while the worker thread runs is safe and never blocks. Kept
    # caches are counted apart, so an idle node's `kv_caches` is still 0 (an
    # eviction's cache shows until it is freed).
    kept = node.kept_caches
    return {"kv_caches": max(0, node.engine.active_requests() - kept), "prefix_caches": kept}


def _add_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(APIError)
    async def api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(UnavailableError)
    async def unavailable(error: UnavailableError) -> Response:
        # The ring cannot serve now (not enough memory left, no plan): retry later.
        return error_response(APIError(503, str(error), type="server_error", code=error.code))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return error_response(http_refusal(error))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(APIError(500, f"internal error: {error}", type="server_error"))


def http_refusal(error: HTTPException) -> APIError:
    """Werkzeug's routing and body-size errors, worded the way OpenAI words them."""
    where = f"{request.method} {request.path}"
    if isinstance(error, NotFound):
        return APIError(404, f"Invalid URL ({where})", code="unknown_url")
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(set(error.valid_methods or ()) - {"HEAD", "OPTIONS"}))
        return APIError(
            405, f"Invalid method ({where}); this URL takes {allowed}", code="method_not_allowed"
        )
    if isinstance(error, RequestEntityTooLarge):
        return APIError(
            413,
            f"the request body is larger than {MAX_BODY_BYTES} bytes",
            code="request_too_large",
        )
    status = error.code or 500
    code = error.name.lower().replace(" ", "_")
    return APIError(status, error.description or error.name, code=code)


def error_response(error: APIError) -> Response:
    # Ollama's clients read a plain {"error": message} from its routes.
    ollama = request.path.startswith("/api/")
    body = json.dumps({"error": error.message}) if ollama else error.json()
    response = Response(body, status=error.status, content_type="application/json")
    response.headers.update(error.headers)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="exoquic"'
    return response
