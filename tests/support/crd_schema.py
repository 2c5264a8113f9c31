"""
Validating DNSCluster objects against deploy/crd/dnsclusters.yaml the way
an API server would, as far as that can be done without one: the schema's
defaults applied (structural defaulting), then the schema checked with
jsonschema (unknown fields refused, as ``kubectl apply`` does with strict
field validation), then every ``x-kubernetes-validations`` CEL rule
evaluated with cel-python.  Messages name the field, in the API server's
style (``spec.workers.replicas: Invalid value: -1: ...``).

What this is not: the API server's cel-go with Kubernetes' CEL library and
its cost estimation, nor its exact messages.  kubernetes-validate has no
schema for a custom kind, hence this.
"""
from __future__ import annotations

import copy
import json
import os

import celpy
import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD_PATH = os.path.join(ROOT, "deploy", "crd", "dnsclusters.yaml")
EXAMPLE_PATH = os.path.join(ROOT, "deploy", "examples", "ha-dns-redis.yaml")


def load_crd() -> dict:
    """The CRD as a mapping."""
    with open(CRD_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_example() -> dict:
    """The seed's DNSCluster example as a mapping."""
    with open(EXAMPLE_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def crd_schema(crd: dict | None = None) -> dict:
    """The openAPIV3Schema of the CRD's one version."""
    crd = crd or load_crd()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict, value):
    """A copy of ``value`` with the schema's defaults filled in where fields are missing."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict, value) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def _json_schema(schema: dict) -> dict:
    """OpenAPI v3 (Kubernetes' structural subset) to JSON Schema: nullable, and unknown fields refused."""
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {k: _json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key == "anyOf":
            out[key] = [_json_schema(v) for v in value]
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_errors(schema: dict, obj: dict) -> list[str]:
    """The schema's complaints about ``obj`` (defaults already applied), one line each, field first."""
    validator = jsonschema.Draft7Validator(_json_schema(schema))
    errors = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(error.absolute_path) or "<object>"
        if error.validator == "additionalProperties":
            errors.append(f"{where}: unknown field: {error.message}")
        elif error.validator == "enum":
            errors.append(f"{where}: Unsupported value: {json.dumps(error.instance)}: {error.message}")
        elif error.validator == "required":
            errors.append(f"{where}: Required value: {error.message}")
        else:
            errors.append(f"{where}: Invalid value: {json.dumps(error.instance)}: {error.message}")
    return errors


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}.get(type(value), "number")


def cel_errors(schema: dict, value, path: tuple = ()) -> list[str]:
    """Every x-kubernetes-validations rule that ``value`` breaks, evaluated with cel-python."""
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            where = _path(path) + rule.get("fieldPath", "")
            errors.append(f"{where or '<object>'}: Invalid value: \"{_type_name(value)}\": {rule['message']}")
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += cel_errors(sub, value[key], path + (key,))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, path + (i,))
    return errors


def validate(obj: dict, crd: dict | None = None) -> list[str]:
    """Defaults, schema, then CEL (only when the schema holds, as the API server does); [] when valid."""
    schema = crd_schema(crd)
    defaulted = apply_defaults(schema, obj)
    errors = schema_errors(schema, defaulted)
    return errors or cel_errors(schema, defaulted)
