"""The OpenAPI document, complete enough for a client generator: every operation lists
the errors it can answer (401 everywhere, as every route wants a key; 403 where a key
needs more than reading; 413 wherever there is a body; 422, 429 from the gateway's
throttling, 500), each as problem+json with an example; every success has an example;
`servers` is where the document was fetched from.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gallop.api.auth import roles_for
from gallop.api.problems import MEDIA_TYPE, Problem, code_of, example_of
from gallop.layout import RAW_PREFIX, REPORT_HTML_FILE, model_prefix

EVERYWHERE = (401, 422, 429, 500)
WITH_A_BODY = (413,)
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# Examples of strings by field name, where "string" would tell a reader nothing.
HINTS = {
    "name": "races",
    "dataset": "races",
    "model_id": "m-3f9a0c1d2e4b5a6c",
    "run_id": "3f9a0c1d2e4b5a6c",
    "version_id": "v-20260105-3f9a0c1d",
    "parent_version_id": "v-20260104-8e2d1b7a",
    "upload_id": "0b5e7c2a9d4f4e1a8c3b6d2e1f0a9b8c",
    "key": RAW_PREFIX + "races/0b5e7c2a9d4f4e1a8c3b6d2e1f0a9b8c/races.csv",
    "url": "https://data.example.com/",
    "spec_hash": "9c1e5f0a7d3b2c41",
    "code_version": "4b1d9c2e",
    "task": "ranking",
    "stage": "training the base models",
    "execution": "local",
    "report_url": "https://artifacts.example.com/"
    + model_prefix("3f9a0c1d2e4b5a6c")
    + REPORT_HTML_FILE,
    "next_cursor": "WyIyMDI2LTAxLTA1VDEyOjAwOjAwWiJd",
}


def install(app: FastAPI) -> None:
    """Complete the app's document, and serve it with `servers` set to the URL it was
    fetched under (API Gateway's stage included)."""
    built = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(built())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    url = app.openapi_url or "/openapi.json"

    async def served(request: Request) -> JSONResponse:
        root = str(request.base_url).rstrip("/")  # the host and root_path: the stage
        return JSONResponse(app.openapi() | {"servers": [{"url": root}]})

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != url]
    app.add_route(url, served, include_in_schema=False)


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if roles_for(method.upper(), re.sub(r"\{[^}]+\}", "x", path)) != {"reader"}:
                operation.setdefault("responses", {}).setdefault("403", {})
            _complete_operation(operation, components)
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, replaced
        components.pop(unused, None)
    return schema


def _complete_operation(operation: dict[str, Any], components: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    statuses = EVERYWHERE + (WITH_A_BODY if "requestBody" in operation else ())
    for status in statuses:
        responses.setdefault(str(status), {})
    for code, response in responses.items():
        status = int(code)
        if status >= 400:
            if not response.get("description") or response["description"] == "Validation Error":
                response["description"] = code_of(status)[1]
            example = example_of(status)
            response["content"] = {MEDIA_TYPE: {"schema": PROBLEM_REF, "example": example}}
            continue
        for media in (response.get("content") or {}).values():
            if media.get("schema") and "example" not in media:
                media["example"] = example_from(media["schema"], components)


def example_from(
    schema: dict[str, Any], components: dict[str, Any], name: str = "", depth: int = 0
) -> Any:
    """A value that fits the schema, to show what a reply looks like."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = components[schema["$ref"].rsplit("/", 1)[-1]]
        return example_from(target, components, name, depth + 1)
    for given in ("example", "const"):
        if given in schema:
            return schema[given]
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("default") is not None:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(union, []) if o.get("type") != "null"]
        if options:
            return example_from(options[0], components, name, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if properties:
            return {
                key: example_from(value, components, key, depth + 1)
                for key, value in properties.items()
            }
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return {"name": example_from(extra, components, "", depth + 1)}
        return {}
    if kind == "array":
        return [example_from(schema.get("items") or {}, components, name, depth + 1)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-01-05T12:00:00Z"
        return HINTS.get(name, "string")
    return {"integer": 1, "number": 0.5, "boolean": True}.get(kind or "")
