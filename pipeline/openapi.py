"""The OpenAPI 3 document of a scoring service, generated from the spec's scoring contract."""

from __future__ import annotations

from typing import Any

from pipeline.spec import Spec


def document(spec: Spec) -> dict[str, Any]:
    """What GET /swagger.json answers: POST /score takes {"data": rows of `features` numbers}."""
    features = spec.scoring.features
    row = {"type": "array", "items": {"type": "number"}, "minItems": features, "maxItems": features}
    if spec.scoring.output == "probabilities":
        answer = {
            "type": "array",
            "description": "class probabilities per row",
            "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
        }
    else:
        answer = {"type": "array", "description": "predicted label per row", "items": {"type": ["integer", "string"]}}
    error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    responses: dict[str, Any] = {
        "200": {"description": "one answer per input row", "content": {"application/json": {"schema": answer}}},
        "400": {"description": 'the body is not {"data": rows}', "content": {"application/json": {"schema": error}}},
        "413": {"description": "the body is too large", "content": {"application/json": {"schema": error}}},
        "500": {"description": "run() failed; see the service log", "content": {"application/json": {"schema": error}}},
        "504": {
            "description": "scoring took longer than deploy.request_timeout_ms",
            "content": {"application/json": {"schema": error}},
        },
    }
    operation: dict[str, Any] = {
        "operationId": "score",
        "description": "Score rows of input data.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "additionalProperties": True,
                        "properties": {"data": {"type": "array", "minItems": 1, "items": row}},
                    }
                }
            },
        },
        "responses": responses,
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": spec.name, "description": spec.description, "version": str(spec.model.version)},
        "paths": {
            "/": {
                "get": {
                    "operationId": "health",
                    "description": "Liveness probe.",
                    "responses": {
                        "200": {"description": "Healthy", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/score": {"post": operation},
        },
    }
    if spec.deploy.auth:
        responses["401"] = {"description": "missing or wrong key", "content": {"application/json": {"schema": error}}}
        doc["components"] = {
            "securitySchemes": {
                "Bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"}
            }
        }
        operation["security"] = [{"Bearer": []}]
    return doc
