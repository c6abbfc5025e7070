"""Query parameters of the upload routes, validated by a pydantic model per route.

FastAPI's per-parameter dependency solving costs about as much per request as decoding a
small upload; one ``model_validate`` of the query string does the same validation. A bad
value raises FastAPI's ``RequestValidationError`` with FastAPI's own error locations, so it
is answered exactly as a FastAPI-validated parameter would be (422 ``invalid_parameters``,
``service/errors.py``), and ``query_openapi`` documents the fields in the schema.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Params = TypeVar("Params", bound=BaseModel)


def parse_query(model: type[Params], request: Request) -> Params:
    """The request's query string as ``model`` (unknown parameters ignored; a repeated one
    counts by its last value)."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("query", *error["loc"])}
            for error in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from None


def query_openapi(model: type[BaseModel]) -> dict:
    """The OpenAPI ``parameters`` of ``model``'s fields, all optional query parameters."""
    schema = model.model_json_schema()
    parameters = []
    for name, field in schema["properties"].items():
        field_schema = {k: v for k, v in field.items() if k != "description"}
        parameter = {"name": name, "in": "query", "required": False, "schema": field_schema}
        if "description" in field:
            parameter["description"] = field["description"]
        parameters.append(parameter)
    return {"parameters": parameters}
