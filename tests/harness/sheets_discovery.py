"""Google's own description of the Sheets v4 API, used to check every request the local server gets.

The discovery document ``sheets.v4.json`` ships inside google-api-python-client
(``googleapiclient/discovery_cache/documents/``). From it we take, per REST method, the HTTP
verb and path template, the query parameters (type, enum, repeated) and the request/response
schemas, and check a request the way Google's front end would: unknown method or parameter, a
value of the wrong type or outside its enum, an unknown field anywhere in the JSON body — each is
a 400 with a message naming the JSON path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import googleapiclient

DISCOVERY_PATH = (
    Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "sheets.v4.json"
)
_INT32 = (-(2**31), 2**31 - 1)


class Invalid(Exception):
    """A request Google would refuse with 400 INVALID_ARGUMENT (or 404 for an unknown path)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Method:
    id: str  # e.g. "sheets.spreadsheets.values.get"
    http_method: str
    path: str  # template, e.g. "v4/spreadsheets/{spreadsheetId}/values/{range}"
    parameters: dict[str, dict[str, Any]]
    request: str | None  # schema name of the body
    response: str | None
    regex: re.Pattern[str] = field(repr=False, default=None)  # type: ignore[assignment]
    path_params: list[str] = field(default_factory=list)


@dataclass
class Call:
    """One request as matched against the discovery document."""

    method: Method
    path_params: dict[str, str]  # decoded
    query: dict[str, list[str]]  # decoded, as sent
    body: Any


class Discovery:
    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.schemas: dict[str, dict[str, Any]] = document["schemas"]
        self.global_params: dict[str, dict[str, Any]] = document["parameters"]
        self.methods: list[Method] = []
        self._collect(document["resources"])
        # A literal tail (":clear") must win over a bare "{range}" that could swallow it.
        self.methods.sort(key=lambda m: -len(re.sub(r"\{[^}]+\}", "", m.path)))

    def _collect(self, resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for m in resource.get("methods", {}).values():
                method = Method(
                    id=m["id"],
                    http_method=m["httpMethod"],
                    path=m["path"],
                    parameters=m.get("parameters", {}),
                    request=m.get("request", {}).get("$ref"),
                    response=m.get("response", {}).get("$ref"),
                )
                pattern = ""
                for part in re.split(r"(\{[^}]+\})", method.path):
                    if part.startswith("{"):
                        name = part.strip("{}+")
                        method.path_params.append(name)
                        # A range may hold ':' (A1:B2) when a client leaves it unencoded.
                        pattern += "(.+?)" if name == "range" else "([^/:]+)"
                    else:
                        pattern += re.escape(part)
                method.regex = re.compile("^/" + pattern + "$")
                self.methods.append(method)
            self._collect(resource.get("resources", {}))

    # --- matching ------------------------------------------------------------------------------

    def match(
        self, http_method: str, raw_path: str, query: dict[str, list[str]], body: Any
    ) -> Call:
        """Find the method for a request and check its parameters and body; raises Invalid."""
        candidates = [m for m in self.methods if m.regex.match(raw_path)]
        if not candidates:
            raise Invalid(f"no Sheets v4 method has the path {raw_path!r}", status=404)
        chosen = [m for m in candidates if m.http_method == http_method]
        if not chosen:
            allowed = ", ".join(sorted({m.http_method for m in candidates}))
            raise Invalid(f"{http_method} is not allowed on {raw_path} ({allowed})", status=404)
        method = chosen[0]
        groups = method.regex.match(raw_path).groups()  # type: ignore[union-attr]
        path_params = {name: unquote(value) for name, value in zip(method.path_params, groups)}
        for name, value in path_params.items():
            self._check_param(method, name, method.parameters[name], [value])
        for name, values in query.items():
            spec = method.parameters.get(name) or self.global_params.get(name)
            if spec is None or spec.get("location") == "path":
                raise Invalid(
                    f'Invalid JSON payload received. Unknown name "{name}": '
                    "Cannot bind query parameter."
                )
            self._check_param(method, name, spec, values)
        if method.request:
            self.check_value(body if body is not None else {}, {"$ref": method.request}, "")
        elif body not in (None, b"", ""):
            raise Invalid(f"{method.id} takes no request body")
        return Call(method, path_params, query, body)

    def _check_param(
        self, method: Method, name: str, spec: dict[str, Any], values: list[str]
    ) -> None:
        if len(values) > 1 and not spec.get("repeated"):
            raise Invalid(f"parameter {name} of {method.id} is given {len(values)} times")
        for value in values:
            kind = spec.get("type", "string")
            if kind == "boolean" and value.lower() not in ("true", "false"):
                raise Invalid(f"Invalid value at '{name}' (TYPE_BOOL), \"{value}\"")
            integer = re.fullmatch(r"-?\d+", value) and _INT32[0] <= int(value) <= _INT32[1]
            if kind == "integer" and not integer:
                raise Invalid(f"Invalid value at '{name}' (TYPE_INT32), \"{value}\"")
            if "enum" in spec and value not in spec["enum"]:
                raise Invalid(f"Invalid value at '{name}' (TYPE_ENUM), \"{value}\"")

    # --- JSON bodies ---------------------------------------------------------------------------

    def check_value(self, value: Any, schema: dict[str, Any], path: str) -> None:
        """Recursive check of ``value`` against a discovery schema; ``path`` names it in errors."""
        if "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        if value is None:  # proto3 JSON: null means "the default"
            return
        kind = schema.get("type")
        where = path or "the request body"
        if kind == "any":
            return
        if kind == "object":
            if not isinstance(value, dict):
                raise Invalid(f"Invalid value at '{where}': expected an object, got {_js(value)}")
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                sub = f"{path}.{key}" if path else key
                if key in props:
                    self.check_value(item, props[key], sub)
                elif extra is not None:
                    self.check_value(item, extra, sub)
                else:
                    parent = f"'{path}'" if path else "root"
                    raise Invalid(
                        f'Invalid JSON payload received. Unknown name "{key}" at {parent}: '
                        "Cannot find field."
                    )
        elif kind == "array":
            if not isinstance(value, list):
                raise Invalid(f"Invalid value at '{where}': expected a list, got {_js(value)}")
            for i, item in enumerate(value):
                self.check_value(item, schema.get("items", {}), f"{path}[{i}]")
        elif kind == "string":
            if not isinstance(value, str):
                raise Invalid(f"Invalid value at '{where}' (TYPE_STRING), {_js(value)}")
            if "enum" in schema and value not in schema["enum"]:
                raise Invalid(f"Invalid value at '{where}' (TYPE_ENUM), {_js(value)}")
        elif kind == "integer":
            number = value
            if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
                number = int(value)
            if isinstance(number, float) and number.is_integer():
                number = int(number)
            if not isinstance(number, int) or isinstance(number, bool):
                raise Invalid(f"Invalid value at '{where}' (TYPE_INT32), {_js(value)}")
            if not _INT32[0] <= number <= _INT32[1]:
                raise Invalid(
                    f"Invalid value at '{where}' (TYPE_INT32), {_js(value)}: out of range"
                )
        elif kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok or value in ("NaN", "Infinity", "-Infinity")
            if not ok:
                raise Invalid(f"Invalid value at '{where}' (TYPE_DOUBLE), {_js(value)}")
        elif kind == "boolean" and not isinstance(value, bool):
            raise Invalid(f"Invalid value at '{where}' (TYPE_BOOL), {_js(value)}")

    def response_schema(self, method_id: str) -> str | None:
        for m in self.methods:
            if m.id == method_id:
                return m.response
        raise KeyError(method_id)


def _js(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


@cache
def discovery() -> Discovery:
    return Discovery(json.loads(DISCOVERY_PATH.read_text(encoding="utf-8")))
