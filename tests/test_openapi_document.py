"""The OpenAPI document (service/openapi.json): valid OpenAPI 3.1, every example valid
against its schema, and every error example carrying the product's reference texts."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.web.problems import PROBLEM_TYPES
from tests.support.openapi import DOCUMENT, HTTP_METHODS, TEXT

DOCUMENT_URI = "urn:attachments-gateway:openapi"
PROBLEM_REF = "#/components/schemas/Problem"
PROBLEM_MEMBERS = ["error", "message", "code", "problem", "request_id"]

# The product's reference texts: (error, message) for each error status. They never change.
REFERENCE_TEXTS = {
    401: ("Unauthorized", "Authentication required. Please provide a valid API token"),
    403: ("Forbidden", "You don't have permission to access this resource"),
    404: ("Not Found", "The requested resource was not found"),
    405: ("Method Not Allowed", "The request method is not allowed for this resource"),
    # Not in the product's reference (it has no options or rate limits): the gateway's own.
    400: ("Bad Request", "The request could not be understood"),
    409: ("Conflict", "The attachment's upload is not complete"),
    413: ("Payload Too Large", "The request body is too large"),
    429: ("Too Many Requests", "Too many requests. Please retry after the time given"),
    500: ("Internal Server Error", "An unexpected error occurred. Please try again later"),
    503: ("Service Unavailable", "The service is temporarily unavailable. Please try again later"),
}
# A code that its status's text would misdescribe has one of its own.
OWN_TEXTS = {"upload_confirmed": ("Conflict", "The attachment's upload is already complete")}


REGISTRY: Registry[Any] = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(pointer: str) -> Any:
    node: Any = DOCUMENT
    for token in pointer.removeprefix("#/").split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def validator_for(schema_pointer: str) -> Draft202012Validator:
    """A validator for the schema at `schema_pointer`, its `#/components/...` refs resolved."""
    return Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#{schema_pointer}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def iter_examples(node: Any, pointer: str = "") -> Iterator[tuple[str, str, Any]]:
    """(pointer of the example, pointer of its schema, its value) for every example.

    Media type, parameter and header objects have a `schema` beside `example` or a map of
    `examples`; schema objects may have an `examples` list. Example values are data and
    are not searched.
    """
    if isinstance(node, dict):
        if "schema" in node:
            schema_pointer = f"{pointer}/schema"
            if "example" in node:
                yield f"{pointer}/example", schema_pointer, node["example"]
            for name, example in node.get("examples", {}).items():
                yield f"{pointer}/examples/{_escape(name)}", schema_pointer, example["value"]
        elif isinstance(node.get("examples"), list):
            for index, value in enumerate(node["examples"]):
                yield f"{pointer}/examples/{index}", pointer, value
        for key, value in node.items():
            if key not in ("example", "examples"):
                yield from iter_examples(value, f"{pointer}/{_escape(key)}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_examples(value, f"{pointer}/{index}")


def iter_responses() -> Iterator[tuple[str, int, str, dict[str, Any]]]:
    """(where, status, pointer of the response, response) for every response of every path:
    its operations' and those of `x-other-methods` (methods OpenAPI cannot list)."""
    for path, item in DOCUMENT["paths"].items():
        operations = {method: item[method] for method in HTTP_METHODS if method in item}
        if "x-other-methods" in item:
            operations["x-other-methods"] = item["x-other-methods"]
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                pointer = f"#/paths/{_escape(path)}/{method}/responses/{status}"
                if "$ref" in response:
                    pointer = response["$ref"]
                    response = _resolve(pointer)
                yield f"{method} {path} {status}", int(status), pointer, response


def iter_problem_examples() -> Iterator[tuple[str, int, str, Any]]:
    """(where, status, pointer of the body schema, value) for every example of a Problem body."""
    for where, status, pointer, response in iter_responses():
        media = response.get("content", {}).get("application/json")
        if media is None or PROBLEM_REF not in json.dumps(media["schema"]):
            continue
        schema_pointer = f"{pointer.removeprefix('#')}/content/application~1json/schema"
        for name, example in media["examples"].items():
            yield f"{where} {name}", status, schema_pointer, example["value"]


EXAMPLES = list(iter_examples(DOCUMENT))
PROBLEM_EXAMPLES = list(iter_problem_examples())


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT)


def test_document_is_pretty_printed_with_two_spaces() -> None:
    assert TEXT == json.dumps(DOCUMENT, indent=2, ensure_ascii=False) + "\n"


def test_only_the_attachment_operations_need_a_key_and_preflights_do_not() -> None:
    assert DOCUMENT["security"] == []
    scheme = DOCUMENT["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, item in DOCUMENT["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                needs_key = path.startswith("/api/v1/attachments") and method != "options"
                expected = [{"apiKey": []}] if needs_key else None
                assert item[method].get("security") == expected, (method, path)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_points_into_the_document() -> None:
    dangling = []
    for ref in set(_refs(DOCUMENT)):
        try:
            assert ref.startswith("#/components/")
            _resolve(ref)
        except (AssertionError, KeyError, IndexError, TypeError):
            dangling.append(ref)
    assert dangling == []


def test_the_document_has_examples_to_check() -> None:
    assert len(EXAMPLES) >= 20
    assert {status for _, status, _, _ in PROBLEM_EXAMPLES} == set(REFERENCE_TEXTS)


@pytest.mark.parametrize(
    ("where", "schema_pointer", "value"), EXAMPLES, ids=[where for where, _, _ in EXAMPLES]
)
def test_example_matches_its_schema(where: str, schema_pointer: str, value: Any) -> None:
    errors = [error.message for error in validator_for(schema_pointer).iter_errors(value)]
    assert errors == [], where


def test_problem_schema_has_exactly_the_members_in_order() -> None:
    problem = DOCUMENT["components"]["schemas"]["Problem"]
    assert problem["required"] == PROBLEM_MEMBERS
    assert list(problem["properties"]) == PROBLEM_MEMBERS
    assert problem["additionalProperties"] is False
    assert problem["properties"]["problem"]["enum"] == list(PROBLEM_TYPES)


@pytest.mark.parametrize(
    ("where", "status", "schema_pointer", "value"),
    PROBLEM_EXAMPLES,
    ids=[where for where, _, _, _ in PROBLEM_EXAMPLES],
)
def test_problem_example_has_the_reference_texts(
    where: str, status: int, schema_pointer: str, value: dict[str, Any]
) -> None:
    assert list(value) == PROBLEM_MEMBERS
    assert value["code"] == status
    texts = OWN_TEXTS.get(value["problem"], REFERENCE_TEXTS[status])
    assert (value["error"], value["message"]) == texts
    # The service renders the same texts for the example's problem code.
    problem_type = PROBLEM_TYPES[value["problem"]]
    assert (problem_type.status, problem_type.error, problem_type.message) == (status, *texts)
    # The response's schema pins the status: another code, or an extra member, is refused.
    validator = validator_for(schema_pointer)
    assert validator.is_valid(value)
    assert not validator.is_valid({**value, "code": 404 if status == 400 else 400})
    assert not validator.is_valid({**value, "detail": "x"})
    without_id = copy.deepcopy(value)
    del without_id["request_id"]
    assert not validator.is_valid(without_id)


def test_every_shared_response_is_used_with_a_status() -> None:
    # So that every Problem example above was checked against a status.
    used = {pointer for _, _, pointer, _ in iter_responses()}
    shared = {f"#/components/responses/{name}" for name in DOCUMENT["components"]["responses"]}
    assert shared <= used
