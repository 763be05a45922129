"""The OpenAPI 3.1 description served at `/openapi.json` (hand-written, kept in
step with `schemas.py` by tests/api/test_openapi.py)."""

from __future__ import annotations

import copy
from typing import Any

from exoquic import __version__
from exoquic.api.schemas import (
    MAX_CHAT_TOP_LOGPROBS,
    MAX_CHOICES,
    MAX_LOGIT_BIAS,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MAX_TEXT_LOGPROBS,
)
from exoquic.engines.sampling import MAX_REPETITION_PENALTY


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


NULLABLE_NUMBER = {"type": ["number", "null"]}
STOP_STRING = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
STOP = {
    "oneOf": [
        STOP_STRING,
        {"type": "array", "items": STOP_STRING, "maxItems": MAX_STOPS},
        {"type": "null"},
    ],
    "description": f"Up to {MAX_STOPS} sequences of up to {MAX_STOP_CHARS} characters; "
    "generation ends before the first one seen.",
}
MODEL_DEFAULT = "Omitted or null: the model's default, shown in its GET /v1/models entry."
COMMON_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string", "description": "A model id or alias from GET /v1/models."},
    "temperature": {
        **NULLABLE_NUMBER,
        "minimum": 0,
        "maximum": 2,
        "description": MODEL_DEFAULT,
    },
    "top_p": {**NULLABLE_NUMBER, "exclusiveMinimum": 0, "maximum": 1, "description": MODEL_DEFAULT},
    "top_k": {"type": ["integer", "null"], "minimum": 0, "description": MODEL_DEFAULT},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "description": MODEL_DEFAULT},
    "stop": STOP,
    "seed": {"type": ["integer", "null"], "minimum": 0},
    "stream": {"type": ["boolean", "null"], "default": False},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
        "additionalProperties": False,
        "description": "Only with stream: true.",
    },
    "n": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_CHOICES,
        "description": "Choices to generate; choice i is seeded seed + i.",
    },
    "min_p": {**NULLABLE_NUMBER, "minimum": 0, "maximum": 1},
    "presence_penalty": {**NULLABLE_NUMBER, "minimum": -2, "maximum": 2},
    "frequency_penalty": {**NULLABLE_NUMBER, "minimum": -2, "maximum": 2},
    "repetition_penalty": {
        **NULLABLE_NUMBER,
        "exclusiveMinimum": 0,
        "maximum": MAX_REPETITION_PENALTY,
        "description": "Hugging Face semantics, on the prompt's and the output's tokens.",
    },
    "logit_bias": {
        "type": ["object", "null"],
        "propertyNames": {"pattern": "^[0-9]{1,10}$"},
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "maxProperties": MAX_LOGIT_BIAS,
        "description": "Token id -> bias added to its logit.",
    },
    "user": {"description": "Accepted and ignored."},
    "metadata": {"description": "Accepted and ignored."},
    "store": {"description": "Accepted and ignored."},
    "service_tier": {"description": "Accepted and ignored."},
    "keep_alive": {
        "type": ["string", "number", "null"],
        "description": "As Ollama's: how long the model stays loaded after this request, "
        'seconds or a duration ("5m", "1h30m"); 0 unloads it right after, negative keeps '
        "it. Omitted: the model's keep-alive (exoquic up --keep-alive, 5m).",
    },
}
TOOL = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "A JSON schema"},
            },
        },
    },
}
TOOL_CALL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "description": "content may be null only on an assistant message with tool_calls.",
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "tool_calls": {"type": "array", "items": TOOL_CALL, "description": "assistant only"},
        "tool_call_id": {"type": "string", "description": "tool only"},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
        "name": {"type": "string"},
    },
}
RESPONSE_FORMAT = {
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 64},
                        "schema": {"type": "object"},
                        "strict": {"type": ["boolean", "null"]},
                        "description": {"type": "string"},
                    },
                },
            },
        },
    ],
    "description": "Output enforced by constrained decoding (llguidance).",
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "response_format": RESPONSE_FORMAT,
        "logprobs": {
            "type": ["boolean", "null"],
            "description": "Each generated token's log-probability (of the raw model "
            "distribution, before temperature, top_k and top_p).",
        },
        "top_logprobs": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": MAX_CHAT_TOP_LOGPROBS,
            "description": "How many most likely alternatives each token lists; needs logprobs.",
        },
        "tools": {"type": "array", "items": TOOL, "maxItems": 128},
        "tool_choice": {
            "oneOf": [
                {"enum": ["auto", "none", "required"]},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {
                        "type": {"const": "function"},
                        "function": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}},
                        },
                    },
                },
            ]
        },
        "parallel_tool_calls": {"type": ["boolean", "null"], "default": True},
        **COMMON_PROPERTIES,
    },
}
COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": False,
    "properties": {
        "prompt": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            ]
        },
        "echo": {
            "type": ["boolean", "null"],
            "description": "The reply starts with the prompt; with logprobs, the prompt's "
            "tokens come with their log-probabilities too (the first one's null).",
        },
        "suffix": {"type": "null"},
        "best_of": {"const": 1},
        "logprobs": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": MAX_TEXT_LOGPROBS,
            "description": "Each token's log-probability and this many most likely alternatives.",
        },
        **COMMON_PROPERTIES,
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Invalid request, or prompt too long for the context"),
    "401": _json(_ref("Error"), "Missing or wrong API key"),
    "403": _json(_ref("Error"), "Host or Origin not allowed"),
    "404": _json(_ref("Error"), "Unknown model or URL"),
    "413": _json(_ref("Error"), "Request body over 4 MiB"),
    "503": _json(_ref("Error"), "The ring cannot serve now (no plan, memory, a node lost)"),
}
OVERLOADED = {
    **_json(_ref("Error"), "This node runs its limit of generations (--max-requests)"),
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
STREAM_OR_JSON = {
    "description": "A completion, or with stream: true server-sent events ending in `data: [DONE]`",
    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
}


def _completion_route(summary: str, request_schema: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(request_schema)}},
            },
            "responses": {"200": STREAM_OR_JSON, **ERRORS, "429": OVERLOADED},
        }
    }


def _get_route(summary: str, public: bool = False) -> dict[str, Any]:
    route: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _json({"type": "object"}, "OK"), **ERRORS},
    }
    if public:
        route["security"] = []
    return {"get": route}


def _ollama_route(summary: str) -> dict[str, Any]:
    ndjson = {"application/json": {"schema": {"type": "object"}}, "application/x-ndjson": {}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {}}},
            "responses": {
                "200": {"description": "A reply, or an NDJSON stream", "content": ndjson}
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The API description (a fresh copy per call: callers may change it)."""
    return copy.deepcopy(_DOCUMENT)


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "exoquic", "version": __version__},
    "components": {
        "schemas": {
            "ChatCompletionRequest": CHAT_REQUEST,
            "CompletionRequest": COMPLETION_REQUEST,
            "ChatMessage": MESSAGE,
            "Error": ERROR,
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/chat/completions": _completion_route("Chat completion", "ChatCompletionRequest"),
        "/v1/completions": _completion_route("Text completion", "CompletionRequest"),
        "/v1/models": _get_route(
            "The models this node serves: loaded ones, and cached ones it loads on demand"
        ),
        "/v1/models/{model}": {
            **_get_route("One model"),
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        },
        "/v1/topology": _get_route("The cluster: nodes, layers, downloads"),
        "/v1/exoquic/models": _get_route(
            "Registry and cached models with sizes, cache state and whether each fits"
        ),
        "/health": _get_route(
            "Liveness; with the API key (or when none is set) also the model, "
            "live requests and KV caches, memory",
            public=True,
        ),
        "/openapi.json": _get_route("This document", public=True),
        "/metrics": _get_route("Prometheus text format (see docs/api.md, Metrics)"),
        # Ollama's API (see docs/api.md); its bodies are Ollama's, documented there.
        "/api/chat": _ollama_route("Ollama chat"),
        "/api/generate": _ollama_route("Ollama generate"),
        "/api/show": _ollama_route("Ollama model details"),
        "/api/pull": _ollama_route("Ollama pull: download a model, streaming progress"),
        "/api/tags": _get_route("Ollama: the models this node serves"),
        "/api/ps": _get_route("Ollama: the running models"),
        "/api/version": _get_route("Ollama: the API version these routes follow"),
    },
}
