"""Checking what deploy writes against the real schemas: Kubernetes' own (the strict JSON schemas that
kubernetes-validate ships) and KServe's (the models of the KServe SDK, generated from its CRD's OpenAPI spec).

KServe's models are walked field by field: a key the SDK does not know, a value of the wrong type or a
missing required field is an error naming its path. Where a KServe type embeds a Kubernetes one
(a container port, resource requirements, object metadata), that part is checked against Kubernetes'
strict schema of the same definition.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from exporter.errors import HeadpruneError
from serving.deploy.settings import KUBERNETES_VERSION

_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


class SchemaError(HeadpruneError):
    """A generated object that its schema refuses (a bug in headprune, or a value a setting let through)."""


def _refused(what: str, path: str, reason: str) -> SchemaError:
    return SchemaError(
        f"the generated {what} fails its schema at {path or 'the top'}: {reason}",
        "report this as a headprune bug, with the command that wrote it",
    )


def check_kubernetes(resource: dict, version: str = KUBERNETES_VERSION) -> str:
    """Returns the Kubernetes version whose strict schema accepts ``resource`` (a whole object with apiVersion and
    kind); raises SchemaError with the path that fails."""
    import kubernetes_validate

    try:
        return kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as error:  # a jsonschema error with its path
        raise _refused(
            f"{resource.get('kind')} {resource.get('metadata', {}).get('name', '')!r}",
            ".".join(map(str, error.absolute_path)),
            error.message,
        ) from error


@functools.lru_cache(maxsize=1)
def _definitions(version: str):
    """Returns (definitions, validator factory) of Kubernetes' strict schemas for ``version``."""
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in kv.major_minor(text).split("."))

    folder = f"v{[v for v in kv.all_versions() if numbers(v) <= numbers(version)][-1]}-local-strict"
    schema = kv.schema_contents(f"kubernetes-json-schema/{folder}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()

    def validator(definition: str):
        return jsonschema.Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{definition}"}, registry=registry)

    return schema["$defs"], validator


def check_kubernetes_part(data: object, sdk_type: str, path: str, what: str, version: str = KUBERNETES_VERSION) -> None:
    """Checks ``data`` against Kubernetes' strict schema of the definition a client class names (``V1ContainerPort``
    is io.k8s.api.core.v1.ContainerPort); raises SchemaError with the path that fails."""
    definitions, validator = _definitions(version)
    match = re.fullmatch(r"V(\d+(?:alpha\d+|beta\d+)?)(\w+)", sdk_type)
    found = [d for d in definitions if match and d.endswith(f".v{match.group(1)}.{match.group(2)}")]
    preferred = [d for d in found if d.startswith("io.k8s.api.core.")] or found
    if len(preferred) != 1:
        raise _refused(what, path, f"no single Kubernetes definition for {sdk_type} ({len(preferred)} found)")
    errors = sorted(validator(preferred[0]).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        inner = ".".join(map(str, errors[0].absolute_path))
        raise _refused(what, f"{path}.{inner}" if inner else path, errors[0].message)


def _sdk_class(name: str):
    import kserve.models

    return getattr(kserve.models, name, None)


def _walk(data: object, sdk_type: str, path: str, what: str) -> None:
    if sdk_type == "object":
        return
    if sdk_type in _PRIMITIVES:
        kind = _PRIMITIVES[sdk_type]
        if not isinstance(data, kind) or (sdk_type in ("int", "float") and isinstance(data, bool)):
            raise _refused(what, path, f"{data!r} is not a {sdk_type}")
        return
    if sdk_type.startswith("list["):
        if not isinstance(data, list):
            raise _refused(what, path, f"{type(data).__name__} where a list is expected")
        for index, item in enumerate(data):
            _walk(item, sdk_type[5:-1], f"{path}[{index}]", what)
        return
    if sdk_type.startswith("dict("):
        value_type = sdk_type[5:-1].split(", ", 1)[1]
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise _refused(what, path, "not a mapping with string keys")
        for key, value in data.items():
            # KServe's resource quantities are Kubernetes' int-or-string.
            _walk(
                str(value) if value_type == "ResourceQuantity" else value,
                "str" if value_type == "ResourceQuantity" else value_type,
                f"{path}.{key}",
                what,
            )
        return
    cls = _sdk_class(sdk_type)
    if cls is None:  # a Kubernetes type inside a KServe one
        check_kubernetes_part(data, sdk_type, path, what)
        return
    if not isinstance(data, dict):
        raise _refused(what, path, f"{type(data).__name__} where {sdk_type} (a mapping) is expected")
    attributes = {key: attribute for attribute, key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(attributes))
    if unknown:
        raise _refused(what, f"{path}.{unknown[0]}" if path else unknown[0], f"{sdk_type} has no field {unknown[0]!r}")
    for key, value in data.items():
        _walk(value, cls.openapi_types[attributes[key]], f"{path}.{key}" if path else key, what)
    try:  # the SDK's own setters refuse a missing required field and values outside an enum
        cls(**{attributes[key]: value for key, value in data.items()})
    except ValueError as error:
        raise _refused(what, path, str(error)) from error


def _check_in_this_process(resources: list[dict]) -> str:
    from importlib.metadata import version

    for resource in resources:
        what = f"InferenceService {resource.get('metadata', {}).get('name', '')!r}"
        if resource.get("apiVersion") != "serving.kserve.io/v1beta1" or resource.get("kind") != "InferenceService":
            raise _refused(what, "apiVersion", "not a serving.kserve.io/v1beta1 InferenceService")
        _walk(resource, "V1beta1InferenceService", "", what)
    return version("kserve")


def check_inference_services(resources: list[dict]) -> str:
    """Returns the KServe SDK version whose models accept every InferenceService of ``resources``; raises SchemaError
    with the path that fails, or HeadpruneError when the SDK is missing.

    The check runs in a fresh interpreter: the SDK registers protobuf messages under the same names as
    tritonclient's, and the two cannot be imported into one process."""
    root = str(Path(__file__).resolve().parents[2])
    try:
        checker = subprocess.run(
            [sys.executable, "-m", __name__],
            input=json.dumps(resources),
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))},
        )
    except subprocess.TimeoutExpired as error:
        raise HeadpruneError(
            "the InferenceService check did not finish in 300 s",
            "run deploy again; if it persists, report it as a headprune bug",
        ) from error
    try:
        answer = json.loads(checker.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise HeadpruneError(
            f"the InferenceService check failed: {checker.stderr.strip()[-400:] or 'no output'}",
            "check that the KServe SDK imports (pip install 'headprune[deploy]')",
        ) from None
    if "error" in answer:
        error_type = SchemaError if answer["schema"] else HeadpruneError
        raise error_type(answer["error"], answer["fix"])
    return answer["version"]


def _main() -> None:
    try:
        print(json.dumps({"version": _check_in_this_process(json.loads(sys.stdin.read()))}))
    except ImportError as error:
        print(
            json.dumps(
                {
                    "error": f"checking InferenceServices needs the KServe SDK ({error})",
                    "fix": "pip install 'headprune[deploy]'",
                    "schema": False,
                }
            )
        )
    except HeadpruneError as error:
        print(json.dumps({"error": error.message, "fix": error.fix, "schema": isinstance(error, SchemaError)}))
    except Exception as error:  # noqa: BLE001  (anything else the SDK raises, reported to the parent in words)
        print(
            json.dumps(
                {
                    "error": f"the KServe SDK failed on the InferenceService: {type(error).__name__}: {error}",
                    "fix": "report this as a headprune bug, with the command that wrote it",
                    "schema": False,
                }
            )
        )


if __name__ == "__main__":
    _main()
