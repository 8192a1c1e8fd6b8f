#!/usr/bin/env python3
"""A fake Kubernetes API server for Capstan's integration tests: one process on 127.0.0.1,
HTTPS with client-certificate (or bearer-token) authentication, emulating what kube-apiserver
does for the calls Capstan makes. See README.md beside this file for what it emulates and what
it does not.

    fake_apiserver.py --dir DIR [--port 0] [--token TOKEN] [--bookmark-interval 1]

It writes DIR/ca.crt, DIR/server.{crt,key}, DIR/client.{crt,key}, a kubeconfig with the
certificates inline (DIR/kubeconfig) and one with file paths (DIR/kubeconfig-files), then
prints "listening on https://127.0.0.1:PORT" and serves until SIGTERM. Fault injection and
other test controls are under /fake/ (see README.md).
"""
import argparse
import base64
import bisect
import email.utils
import http.client
import http.server
import json
import math
import os
import random
import re
import signal
import socket
import socketserver
import ssl
import string
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from fractions import Fraction

# -- resources -----------------------------------------------------------------------------


class Resource:
    """One served resource type."""

    def __init__(self, group, version, plural, kind, namespaced=True, status=False, generation=False,
                 unconditional=True, schema=None, singular=None, short=(), crd=None):
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.namespaced, self.status, self.generation = namespaced, status, generation
        self.unconditional = unconditional  # PUT without resourceVersion allowed
        self.schema = schema                # openAPIV3Schema (custom resources)
        self.singular = singular or kind.lower()
        self.short = list(short)
        self.crd = crd                      # the CRD's name, for custom resources

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self):
        """What error messages call it: deployments.apps, services, widgets.example.com."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def store_key(self):
        return (self.group, self.plural)


BUILTIN = [
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, status=True, short=["ns"]),
    Resource("", "v1", "services", "Service", status=True, short=["svc"]),
    Resource("", "v1", "events", "Event", short=["ev"]),
    Resource("", "v1", "configmaps", "ConfigMap", short=["cm"]),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", short=["sa"]),
    Resource("", "v1", "pods", "Pod", status=True, short=["po"]),
    Resource("apps", "v1", "deployments", "Deployment", status=True, generation=True, short=["deploy"]),
    Resource("batch", "v1", "jobs", "Job", status=True, generation=True),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", status=True, generation=True, short=["ing"]),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, status=True, generation=True, short=["crd", "crds"]),
]


class APIError(Exception):
    """A failure answered as a metav1.Status."""

    def __init__(self, code, reason, message, details=None, headers=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details
        self.headers = headers or {}

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(resource, name):
    return APIError(404, "NotFound", f'{resource.qualified} "{name}" not found',
                    {"name": name, "group": resource.group, "kind": resource.plural})


def conflict(resource, name):
    return APIError(409, "Conflict", f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": resource.group, "kind": resource.plural})


def invalid(resource, name, causes):
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    return APIError(422, "Invalid", f'{resource.kind}.{resource.group or "core"} "{name}" is invalid: {summary}'
                    if resource.group else f'{resource.kind} "{name}" is invalid: {summary}',
                    {"name": name, "group": resource.group, "kind": resource.kind, "causes": causes})


def bad_request(message):
    return APIError(400, "BadRequest", message)


def clone(value):
    """A deep copy of JSON data (dicts, lists, immutable scalars): what copy.deepcopy gives,
    without its memo and dispatch (copy.deepcopy was 12% of the fake's time under load)."""
    if type(value) is dict:
        return {key: clone(item) for key, item in value.items()}
    if type(value) is list:
        return [clone(item) for item in value]
    return value


NOW = (0, "", "")  # (second, RFC 3339, HTTP date): formatted once a second, not per write


def now_texts():
    global NOW
    seen = NOW
    second = int(time.time())
    if seen[0] != second:
        utc = time.gmtime(second)
        seen = NOW = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", utc), email.utils.formatdate(second, usegmt=True))
    return seen


def now_rfc3339():
    return now_texts()[1]


# -- validation ----------------------------------------------------------------------------

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def cause(reason, field, message):
    return {"reason": reason, "field": field, "message": message}


def validate_metadata(resource, obj, causes):
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    pattern = DNS1035_LABEL if resource.plural in ("services", "namespaces") and resource.group == "" else DNS1123_SUBDOMAIN
    if resource.plural == "namespaces":
        pattern = DNS1123_LABEL
    if not name:
        causes.append(cause("FieldValueRequired", "metadata.name", "Required value: name or generateName is required"))
    elif len(name) > (63 if pattern is not DNS1123_SUBDOMAIN else 253) or not pattern.match(name):
        causes.append(cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower case alphanumeric characters, \'-\' or \'.\''))
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict):
            causes.append(cause("FieldValueInvalid", f"metadata.{field}", "Invalid value: must be a map of strings"))
            continue
        for key, value in values.items():
            if not QUALIFIED_NAME.match(key) or len(key.split("/")[-1]) > 63:
                causes.append(cause("FieldValueInvalid", f"metadata.{field}", f'Invalid value: "{key}": name part must consist of alphanumeric characters, \'-\', \'_\' or \'.\''))
            if not isinstance(value, str):
                causes.append(cause("FieldValueInvalid", f"metadata.{field}.{key}", "Invalid value: must be a string"))
            elif field == "labels" and (len(value) > 63 or not LABEL_VALUE.match(value)):
                causes.append(cause("FieldValueInvalid", f"metadata.labels", f'Invalid value: "{value}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\''))


QUANTITY = re.compile(r"^([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)((?:[KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def canonical_quantity(text):
    """resource.Quantity as the API server stores it in a built-in object: parsed, then written
    in canonical form (the suffix family kept, the largest suffix with a whole mantissa,
    precision below nano rounded up): "0.5" -> "500m", "1024Mi" -> "1Gi", "1.5Gi" -> "1536Mi".
    None when the text is not a quantity."""
    match = QUANTITY.match(str(text).strip())
    if not match:
        return None
    sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
    value = Fraction(number)
    if suffix in BINARY_SUFFIXES:
        value *= 2 ** BINARY_SUFFIXES[suffix]
    elif suffix in DECIMAL_SUFFIXES:
        value *= Fraction(10) ** DECIMAL_SUFFIXES[suffix]
    else:
        value *= Fraction(10) ** int(suffix[1:])
    nanos = math.ceil(value * 10 ** 9)
    if nanos == 0:
        return "0"
    sign = "-" if sign == "-" else ""
    if suffix in BINARY_SUFFIXES and nanos % 10 ** 9 == 0 and nanos // 10 ** 9 >= 1024:
        mantissa, power = nanos // 10 ** 9, 0
        while power < 60 and mantissa % 1024 == 0:
            mantissa, power = mantissa // 1024, power + 10
        return sign + str(mantissa) + {v: k for k, v in BINARY_SUFFIXES.items()}.get(power, "")
    mantissa, exponent = nanos, -9
    while exponent < 18 and mantissa % 1000 == 0:
        mantissa, exponent = mantissa // 1000, exponent + 3
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return sign + str(mantissa) + ("" if exponent == 0 else f"e{exponent}")
    return sign + str(mantissa) + {v: k for k, v in DECIMAL_SUFFIXES.items()}[exponent]


def validate_builtin(resource, obj, causes):
    spec = obj.get("spec") or {}
    if resource.kind == "Deployment":
        selector = (spec.get("selector") or {}).get("matchLabels")
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            causes.append(cause("FieldValueRequired", "spec.selector", "Required value"))
        elif selector and any(template_labels.get(k) != v for k, v in selector.items()):
            causes.append(cause("FieldValueInvalid", "spec.template.metadata.labels", "Invalid value: `selector` does not match template `labels`"))
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            causes.append(cause("FieldValueRequired", "spec.template.spec.containers", "Required value"))
        for i, container in enumerate(containers):
            if not container.get("name"):
                causes.append(cause("FieldValueRequired", f"spec.template.spec.containers[{i}].name", "Required value"))
            if not container.get("image"):
                causes.append(cause("FieldValueRequired", f"spec.template.spec.containers[{i}].image", "Required value"))
            # Quantities are decoded and stored in canonical form, as the real server does.
            for part in ("requests", "limits"):
                amounts = (container.get("resources") or {}).get(part) or {}
                for name, amount in list(amounts.items()):
                    canonical = canonical_quantity(amount)
                    if canonical is None:
                        causes.append(cause("FieldValueInvalid", f"spec.template.spec.containers[{i}].resources.{part}[{name}]",
                                            "Invalid value: quantities must match the regular expression "
                                            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
                    else:
                        amounts[name] = canonical
        if spec.get("replicas", 0) < 0:
            causes.append(cause("FieldValueInvalid", "spec.replicas", "Invalid value: must be greater than or equal to 0"))
    elif resource.kind == "Service":
        ports = spec.get("ports") or []
        if not ports and spec.get("clusterIP") != "None":
            causes.append(cause("FieldValueRequired", "spec.ports", "Required value"))
        for i, port in enumerate(ports):
            if not isinstance(port.get("port"), int) or not 1 <= port["port"] <= 65535:
                causes.append(cause("FieldValueInvalid", f"spec.ports[{i}].port", "Invalid value: must be between 1 and 65535, inclusive"))
            if len(ports) > 1 and not port.get("name"):
                causes.append(cause("FieldValueRequired", f"spec.ports[{i}].name", "Required value"))
    elif resource.kind == "Ingress":
        for i, rule in enumerate(spec.get("rules") or []):
            for j, path in enumerate(((rule.get("http") or {}).get("paths")) or []):
                if not path.get("pathType"):
                    causes.append(cause("FieldValueRequired", f"spec.rules[{i}].http.paths[{j}].pathType", "Required value: pathType must be specified"))
                if not path.get("backend"):
                    causes.append(cause("FieldValueRequired", f"spec.rules[{i}].http.paths[{j}].backend", "Required value"))
    elif resource.kind == "Lease":
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            causes.append(cause("FieldValueInvalid", "spec.leaseDurationSeconds", "Invalid value: must be greater than 0"))
    elif resource.kind == "Event":
        involved = obj.get("involvedObject")
        if not involved:
            causes.append(cause("FieldValueRequired", "involvedObject", "Required value"))
        # core/v1 Events as the server validates them (legacy rules): without an eventTime the
        # Event lives in its object's namespace ("" or "default" for a cluster-scoped object);
        # with one, the reporting fields, action and reason are required.
        namespace, involved_namespace = obj["metadata"].get("namespace", ""), (involved or {}).get("namespace", "")
        if not obj.get("eventTime"):
            if (involved_namespace and namespace != involved_namespace) or (not involved_namespace and namespace not in ("", "default")):
                causes.append(cause("FieldValueInvalid", "involvedObject.namespace", f'Invalid value: "{involved_namespace}": does not match event.namespace'))
        else:
            for field in ("reportingComponent", "reportingInstance", "action", "reason"):
                if not obj.get(field):
                    causes.append(cause("FieldValueRequired", field, "Required value"))
        if obj.get("type") not in (None, "Normal", "Warning"):
            causes.append(cause("FieldValueNotSupported", "type", f'Unsupported value: "{obj.get("type")}": supported values: "Normal", "Warning"'))
    elif resource.kind in ("ClusterRoleBinding", "RoleBinding"):
        if not obj.get("roleRef"):
            causes.append(cause("FieldValueRequired", "roleRef", "Required value"))
    elif resource.kind == "CustomResourceDefinition":
        problem = crd_shape_problem(obj)
        if problem:
            raise bad_request(f"CustomResourceDefinition in version \"v1\" cannot be handled as a CustomResourceDefinition: {problem}")
        group, names = spec.get("group", ""), spec.get("names") or {}
        if obj["metadata"].get("name") != f"{names.get('plural')}.{group}":
            causes.append(cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{obj["metadata"].get("name")}": must be spec.names.plural+"."+spec.group'))
        if not names.get("kind"):
            causes.append(cause("FieldValueRequired", "spec.names.kind", "Required value"))
        versions = spec.get("versions") or []
        if not versions:
            causes.append(cause("FieldValueRequired", "spec.versions", "Required value"))
        if sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(cause("FieldValueInvalid", "spec.versions", "Invalid value: must have exactly one version marked as storage version"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(cause("FieldValueNotSupported", "spec.scope", 'Unsupported value: supported values: "Cluster", "Namespaced"'))
        for i, version in enumerate(versions):
            schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
            if schema is None:
                causes.append(cause("FieldValueRequired", f"spec.versions[{i}].schema.openAPIV3Schema", "Required value: schemas are required"))
            else:
                validate_crd_schema(schema, f"spec.versions[{i}].schema.openAPIV3Schema", causes)
            validate_printer_columns(version.get("additionalPrinterColumns"), f"spec.versions[{i}].additionalPrinterColumns", causes)


# -- CRD schemas: what apiextensions-apiserver requires of them --------------------------------
#
# A v1 CRD's schema must be *structural* (the CRD documentation's "Specifying a structural
# schema") and pass the apiextensions validation of its OpenAPI subset; a CRD failing either is
# refused with 422, whatever the fake's validator could make of it.

JUNCTORS = ("allOf", "anyOf", "oneOf")
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
PRINTER_COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
PRINTER_COLUMN_FORMATS = ("int32", "int64", "float", "double", "byte", "date", "date-time", "password")
OPENAPI_TYPES = ("array", "boolean", "integer", "number", "object", "string")
# What Go's regexp (RE2) refuses that Python's re accepts.
NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P?=|\\[1-9]|[*+?}]\+|\(\?>")


SCHEMA_FIELD_TYPES = {
    "type": str, "format": str, "pattern": str, "description": str, "title": str,
    "required": list, "enum": list, "allOf": list, "anyOf": list, "oneOf": list, "not": dict,
    "properties": dict, "items": (dict, list), "additionalProperties": (bool, dict),
    "nullable": bool, "uniqueItems": bool, "x-kubernetes-preserve-unknown-fields": bool,
    "x-kubernetes-int-or-string": bool, "x-kubernetes-embedded-resource": bool,
    "x-kubernetes-list-type": str, "x-kubernetes-map-type": str, "x-kubernetes-list-map-keys": list,
    "x-kubernetes-validations": list,
    "minLength": int, "maxLength": int, "minItems": int, "maxItems": int, "minProperties": int, "maxProperties": int,
    "minimum": (int, float), "maximum": (int, float), "multipleOf": (int, float),
    "exclusiveMinimum": bool, "exclusiveMaximum": bool,
}


def crd_shape_problem(crd):
    """Where a CRD's body does not decode as one (see schema_shape_problem), or None."""
    spec = crd.get("spec") or {}
    if not isinstance(spec, dict):
        return "spec: expected an object"
    if not isinstance(spec.get("names") or {}, dict):
        return "spec.names: expected an object"
    versions = spec.get("versions") or []
    if not isinstance(versions, list):
        return "spec.versions: expected a list"
    for i, version in enumerate(versions):
        if not isinstance(version, dict) or not isinstance(version.get("schema") or {}, dict):
            return f"spec.versions[{i}]: expected an object with a schema object"
        columns = version.get("additionalPrinterColumns") or []
        if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
            return f"spec.versions[{i}].additionalPrinterColumns: expected a list of objects"
        schema = version.get("schema", {}).get("openAPIV3Schema")
        problem = schema_shape_problem(schema, f"spec.versions[{i}].schema.openAPIV3Schema") if schema is not None else None
        if problem:
            return problem
    return None


def schema_shape_problem(schema, path):
    """Where a schema is not a JSONSchemaProps at all (a list for properties, a string for a
    schema...): the server cannot decode such a CRD and answers 400, before any validation."""
    if not isinstance(schema, dict):
        return f"{path}: expected a schema object, got {type(schema).__name__}"
    for key, value in schema.items():
        expected = SCHEMA_FIELD_TYPES.get(key)
        if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            return f"{path}.{key}: cannot decode {type(value).__name__}"
    children = [(f"{path}.properties[{k}]", v) for k, v in (schema.get("properties") or {}).items()]
    children += [(f"{path}.{j}[{i}]", v) for j in JUNCTORS for i, v in enumerate(schema.get(j) or [])]
    for key in ("not", "additionalProperties", "items"):
        value = schema.get(key)
        if isinstance(value, dict):
            children.append((f"{path}.{key}", value))
        elif isinstance(value, list):
            children += [(f"{path}.{key}[{i}]", v) for i, v in enumerate(value)]
    for child_path, child in children:
        problem = schema_shape_problem(child, child_path)
        if problem:
            return problem
    return None


def validate_crd_schema(schema, path, causes, level="root", defaults=True, meta=False):
    """The structural-schema invariants and the apiextensions checks of one schema node (and
    below), at `path` (spec.versions[i].schema.openAPIV3Schema...)."""
    if not isinstance(schema, dict):
        causes.append(cause("FieldValueInvalid", path, "Invalid value: must be a schema object"))
        return
    kind = schema.get("type", "")
    for key, why in (("$ref", "$ref is not supported"), ("id", "id is not supported"),
                     ("additionalItems", "additionalItems is not supported"), ("patternProperties", "patternProperties is not supported"),
                     ("definitions", "definitions is not supported"), ("dependencies", "dependencies is not supported")):
        if key in schema:
            causes.append(cause("FieldValueForbidden", f"{path}.{key}", f"Forbidden: {why}"))
    if kind == "null":
        causes.append(cause("FieldValueForbidden", f"{path}.type", "Forbidden: type cannot be set to null, use nullable as an alternative"))
    elif kind and kind not in OPENAPI_TYPES:
        causes.append(cause("FieldValueNotSupported", f"{path}.type", f'Unsupported value: "{kind}": supported values: ' + ", ".join(f'"{t}"' for t in OPENAPI_TYPES)))
    if "default" in schema and not defaults:
        causes.append(cause("FieldValueForbidden", f"{path}.default", "Forbidden: must not be set in top-level metadata" if meta else "Forbidden: must not be set"))
    if schema.get("uniqueItems"):
        causes.append(cause("FieldValueForbidden", f"{path}.uniqueItems", "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"))
    additional = schema.get("additionalProperties")
    if additional is not None:
        if schema.get("properties") and (additional is False or isinstance(additional, dict)):
            causes.append(cause("FieldValueForbidden", f"{path}.additionalProperties", "Forbidden: additionalProperties and properties are mutual exclusive"))
        if level == "root":
            causes.append(cause("FieldValueForbidden", f"{path}.additionalProperties", "Forbidden: must not be used at the root"))
    if schema.get("x-kubernetes-preserve-unknown-fields") is False:
        causes.append(cause("FieldValueInvalid", f"{path}.x-kubernetes-preserve-unknown-fields", "Invalid value: false: must be true or undefined"))
    int_or_string = bool(schema.get("x-kubernetes-int-or-string"))
    if int_or_string and schema.get("x-kubernetes-preserve-unknown-fields"):
        causes.append(cause("FieldValueInvalid", f"{path}.x-kubernetes-preserve-unknown-fields", "Invalid value: true: must be false if x-kubernetes-int-or-string is true"))
    if not kind and not int_or_string and not schema.get("x-kubernetes-preserve-unknown-fields"):
        where = {"root": "at the root", "item": "for specified array items", "field": "for specified object fields"}[level]
        causes.append(cause("FieldValueRequired", f"{path}.type", f"Required value: must not be empty {where}"))
    if level == "root" and kind and kind != "object":
        causes.append(cause("FieldValueInvalid", f"{path}.type", f'Invalid value: "{kind}": must be object at the root'))
    if kind == "array" and "items" not in schema:
        causes.append(cause("FieldValueRequired", f"{path}.items", "Required value: must be specified"))
    if isinstance(schema.get("items"), list):
        causes.append(cause("FieldValueForbidden", f"{path}.items", "Forbidden: items must be a schema object and not an array"))
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
            supported = not NOT_RE2.search(schema["pattern"])
        except re.error:
            supported = False
        if not supported:
            causes.append(cause("FieldValueInvalid", f"{path}.pattern", f'Invalid value: "{schema["pattern"]}": must be a valid regular expression, but isn\'t'))
    map_type, list_type, map_keys = schema.get("x-kubernetes-map-type"), schema.get("x-kubernetes-list-type"), schema.get("x-kubernetes-list-map-keys") or []
    if map_type is not None and kind != "object":
        causes.append(cause("FieldValueInvalid", f"{path}.type", "Invalid value: must be object if x-kubernetes-map-type is specified"))
    if map_type not in (None, "atomic", "granular"):
        causes.append(cause("FieldValueNotSupported", f"{path}.x-kubernetes-map-type", f'Unsupported value: "{map_type}": supported values: "atomic", "granular"'))
    if list_type is not None and kind != "array":
        causes.append(cause("FieldValueInvalid", f"{path}.type", "Invalid value: must be array if x-kubernetes-list-type is specified"))
    if list_type not in (None, "atomic", "set", "map"):
        causes.append(cause("FieldValueNotSupported", f"{path}.x-kubernetes-list-type", f'Unsupported value: "{list_type}": supported values: "atomic", "map", "set"'))
    if map_keys and list_type != "map":
        causes.append(cause("FieldValueInvalid", f"{path}.x-kubernetes-list-type", "Invalid value: must be map if x-kubernetes-list-map-keys is non-empty"))
    items = schema.get("items") if isinstance(schema.get("items"), dict) else None
    if list_type in ("map", "set") and items is not None and items.get("nullable"):
        causes.append(cause("FieldValueForbidden", f"{path}.items.nullable", f"Forbidden: cannot be nullable when x-kubernetes-list-type is {list_type}"))
    if list_type == "set" and items is not None:
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            causes.append(cause("FieldValueInvalid", f"{path}.items.x-kubernetes-map-type", "Invalid value: must be atomic as item of a list with x-kubernetes-list-type=set"))
        if items.get("type") == "array" and items.get("x-kubernetes-list-type", "atomic") != "atomic":
            causes.append(cause("FieldValueInvalid", f"{path}.items.x-kubernetes-list-type", "Invalid value: must be atomic as item of a list with x-kubernetes-list-type=set"))
    if list_type == "map":
        if not map_keys:
            causes.append(cause("FieldValueRequired", f"{path}.x-kubernetes-list-map-keys", "Required value: must not be empty if x-kubernetes-list-type is map"))
        if items is None:
            causes.append(cause("FieldValueRequired", f"{path}.items", "Required value: must have a schema if x-kubernetes-list-type is map"))
        elif items.get("type") != "object":
            causes.append(cause("FieldValueInvalid", f"{path}.items.type", "Invalid value: must be object if parent array's x-kubernetes-list-type is map"))
        else:
            properties, required = items.get("properties") or {}, set(items.get("required") or [])
            if len(set(map_keys)) != len(map_keys):
                causes.append(cause("FieldValueInvalid", f"{path}.x-kubernetes-list-map-keys", "Invalid value: must not contain duplicate entries"))
            for key in map_keys:
                if key not in properties:
                    causes.append(cause("FieldValueInvalid", f"{path}.x-kubernetes-list-map-keys", "Invalid value: entries must all be names of item properties"))
                    continue
                if properties[key].get("type") in ("array", "object"):
                    causes.append(cause("FieldValueInvalid", f"{path}.items.properties[{key}].type", "Invalid value: must be a scalar type if parent array's x-kubernetes-list-type is map"))
                if key not in required and "default" not in properties[key]:
                    causes.append(cause("FieldValueRequired", f"{path}.items.properties[{key}].default",
                                        "Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"))
                if properties[key].get("nullable"):
                    causes.append(cause("FieldValueForbidden", f"{path}.items.properties[{key}].nullable",
                                        "Forbidden: this property is in x-kubernetes-list-map-keys, so it cannot be nullable"))
    # The value validations under allOf/anyOf/oneOf/not may only restrict what the structural
    # part declares, never declare it (the two int-or-string patterns aside).
    for junctor in JUNCTORS:
        for i, option in enumerate(schema.get(junctor) or []):
            if int_or_string and ((junctor == "anyOf" and schema[junctor] == INT_OR_STRING_ANY_OF) or
                                  (junctor == "allOf" and i == 0 and option.get("anyOf") == INT_OR_STRING_ANY_OF)):
                continue
            validate_nested(option, schema, f"{path}.{junctor}[{i}]", causes)
    if "not" in schema:
        validate_nested(schema["not"], schema, f"{path}.not", causes)
    properties = schema.get("properties") or {}
    for name, child in properties.items():
        top = level == "root" and name in ("metadata", "apiVersion", "kind")
        validate_crd_schema(child, f"{path}.properties[{name}]", causes, "field", defaults=defaults and not top, meta=top)
    if level == "root":
        for name in ("apiVersion", "kind"):
            if name in properties and properties[name].get("type") != "string":
                causes.append(cause("FieldValueInvalid", f"{path}.properties[{name}].type", "Invalid value: must be string"))
        metadata = properties.get("metadata")
        if metadata is not None:
            if metadata.get("type") != "object":
                causes.append(cause("FieldValueInvalid", f"{path}.properties[metadata].type", "Invalid value: must be object"))
            # apiextensions clears only the type and default before comparing with an empty
            # schema: a description there is refused too (kubernetes/kubernetes#96709).
            if set(metadata) - {"type", "properties"} or set(metadata.get("properties") or {}) - {"name", "generateName"}:
                causes.append(cause("FieldValueForbidden", f"{path}.properties[metadata]",
                                    "Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"))
    if items is not None:
        validate_crd_schema(items, f"{path}.items", causes, "item", defaults=defaults, meta=meta)
    if isinstance(additional, dict):
        validate_crd_schema(additional, f"{path}.additionalProperties", causes, "field", defaults=defaults and not meta, meta=meta)
    if "default" in schema and defaults:
        # A default must be valid for its schema and have no field the schema would prune.
        problems, value = [], clone(schema["default"])
        pruned = schema_validate(schema, value, f"{path}.default", problems)
        if problems:
            causes.extend(problems)
        elif pruned != schema["default"]:
            causes.append(cause("FieldValueInvalid", f"{path}.default", "Invalid value: must not have unknown fields"))


def validate_nested(option, structural, path, causes):
    """A schema under a logical junctor: value validation only, and only of what `structural`
    (the schema the junctor sits in) specifies."""
    if not isinstance(option, dict):
        causes.append(cause("FieldValueInvalid", path, "Invalid value: must be a schema object"))
        return
    for key, why in (("type", "must be empty to be structural"), ("additionalProperties", "must be undefined to be structural"),
                     ("default", "must be undefined to be structural"), ("title", "must be empty to be structural"),
                     ("description", "must be empty to be structural"), ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
                     ("x-kubernetes-embedded-resource", "must be false to be structural"), ("x-kubernetes-int-or-string", "must be false to be structural"),
                     ("x-kubernetes-list-map-keys", "must be empty to be structural"), ("x-kubernetes-list-type", "must be undefined to be structural"),
                     ("x-kubernetes-map-type", "must be undefined to be structural"), ("x-kubernetes-validations", "must be empty to be structural")):
        present = option.get(key)
        if present not in (None, False, "", []):
            causes.append(cause("FieldValueForbidden", f"{path}.{key}", f"Forbidden: {why}"))
    if option.get("nullable"):
        causes.append(cause("FieldValueForbidden", f"{path}.nullable", "Forbidden: must be false to be structural"))
    known = structural.get("properties") or {}
    for name, child in (option.get("properties") or {}).items():
        if name == "metadata":
            causes.append(cause("FieldValueForbidden", f"{path}.properties[metadata]", "Forbidden: must not be specified in a nested context"))
        if name not in known:
            causes.append(cause("FieldValueRequired", f"{path}.properties[{name}]", "Required value: must be specified outside of the logical junctor too"))
        else:
            validate_nested(child, known[name], f"{path}.properties[{name}]", causes)
    if isinstance(option.get("items"), dict):
        if not isinstance(structural.get("items"), dict):
            causes.append(cause("FieldValueRequired", f"{path}.items", "Required value: must be specified outside of the logical junctor too"))
        else:
            validate_nested(option["items"], structural["items"], f"{path}.items", causes)
    for junctor in JUNCTORS:
        for i, inner in enumerate(option.get(junctor) or []):
            validate_nested(inner, structural, f"{path}.{junctor}[{i}]", causes)
    if "not" in option:
        validate_nested(option["not"], structural, f"{path}.not", causes)


def validate_printer_columns(columns, path, causes):
    for i, column in enumerate(columns or []):
        where = f"{path}[{i}]"
        if not column.get("name"):
            causes.append(cause("FieldValueRequired", f"{where}.name", "Required value"))
        if not column.get("type"):
            causes.append(cause("FieldValueRequired", f"{where}.type", "Required value"))
        elif column["type"] not in PRINTER_COLUMN_TYPES:
            causes.append(cause("FieldValueNotSupported", f"{where}.type", f'Unsupported value: "{column["type"]}": supported values: ' + ", ".join(f'"{t}"' for t in PRINTER_COLUMN_TYPES)))
        if column.get("format") and column["format"] not in PRINTER_COLUMN_FORMATS:
            causes.append(cause("FieldValueNotSupported", f"{where}.format", f'Unsupported value: "{column["format"]}"'))
        if column.get("priority", 0) < 0:
            causes.append(cause("FieldValueInvalid", f"{where}.priority", "Invalid value: must be greater than or equal to 0"))
        json_path = column.get("jsonPath", "")
        if not json_path:
            causes.append(cause("FieldValueRequired", f"{where}.jsonPath", "Required value"))
        elif not json_path.startswith("."):
            causes.append(cause("FieldValueInvalid", f"{where}.jsonPath", f'Invalid value: "{json_path}": must be a simple json path starting with .'))


TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def schema_validate(schema, value, path, causes, prune=True):
    """Validates `value` against a structural schema (the keywords the apiextensions validator
    applies) and prunes unknown fields in place. Returns the possibly pruned value."""
    if value is None:
        if not schema.get("nullable"):
            causes.append(cause("FieldValueTypeInvalid", path, f'Invalid value: "null": {path} in body must be of type {schema.get("type", "object")}: "null"'))
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            causes.append(cause("FieldValueTypeInvalid", path, f"Invalid value: {path} in body must be of type integer or string"))
        return value
    expected = schema.get("type")
    actual = "integer" if isinstance(value, int) and not isinstance(value, bool) else TYPE_NAMES.get(type(value))
    if expected and not (actual == expected or (expected == "number" and actual == "integer")):
        causes.append(cause("FieldValueTypeInvalid", path, f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'))
        return value
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        causes.append(cause("FieldValueNotSupported", path, f'Unsupported value: "{value}": supported values: {allowed}'))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(cause("FieldValueTooLong", path, f"Too long: may not be longer than {schema['maxLength']}"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(cause("FieldValueInvalid", path, f"Invalid value: \"{value}\": {path} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(cause("FieldValueInvalid", path, f"Invalid value: \"{value}\": {path} in body should match '{schema['pattern']}'"))
        if schema.get("format") == "date-time" and not RFC3339.match(value):
            causes.append(cause("FieldValueInvalid", path, f'Invalid value: "{value}": {path} in body must be of type date-time: "{value}"'))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append(cause("FieldValueInvalid", path, f"Invalid value: {value}: {path} in body should be greater than or equal to {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            causes.append(cause("FieldValueInvalid", path, f"Invalid value: {value}: {path} in body should be less than or equal to {schema['maximum']}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(cause("FieldValueInvalid", path, f"Invalid value: {path} in body should have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(cause("FieldValueTooMany", path, f"Too many: must have at most {schema['maxItems']} items"))
        items = schema.get("items")
        if items:
            for i, item in enumerate(value):
                value[i] = schema_validate(items, item, f"{path}[{i}]", causes, prune)
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen = set()
            for i, item in enumerate(value):
                key = tuple(json.dumps(item.get(k)) for k in keys) if isinstance(item, dict) else None
                if key in seen:
                    causes.append(cause("FieldValueDuplicate", f"{path}[{i}]", f"Duplicate value: {dict(zip(keys, key))}"))
                seen.add(key)
        elif schema.get("x-kubernetes-list-type") == "set":
            if len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
                causes.append(cause("FieldValueDuplicate", path, "Duplicate value"))
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for name in schema.get("required", []):
            if name not in value:
                causes.append(cause("FieldValueRequired", f"{path}.{name}" if path else name, "Required value"))
        for name in list(value):
            child = f"{path}.{name}" if path else name
            if properties is not None and name in properties:
                value[name] = schema_validate(properties[name], value[name], child, causes, prune)
            elif isinstance(additional, dict):
                value[name] = schema_validate(additional, value[name], child, causes, prune)
            elif prune and not schema.get("x-kubernetes-preserve-unknown-fields") and additional is not True:
                # Unknown fields are pruned, as the API server does; an object schema without
                # properties (and without additionalProperties or preserve-unknown-fields)
                # keeps none.
                del value[name]
        for keyword in ("oneOf", "anyOf"):
            if keyword in schema:
                matches = 0
                for option in schema[keyword]:
                    probe = []
                    schema_validate(dict(option, type=option.get("type", "object")), clone(value), path, probe, prune=False)
                    matches += not probe
                if (keyword == "oneOf" and matches != 1) or (keyword == "anyOf" and matches == 0):
                    causes.append(cause("FieldValueInvalid", path, f"Invalid value: {path} in body must validate {'one and only one' if keyword == 'oneOf' else 'at least one'} schema ({keyword})"))
    return value


# -- label selectors -----------------------------------------------------------------------

def parse_selector(text):
    """A label selector as the API accepts it: a=b, a==b, a!=b, a in (x,y), a notin (x), a, !a."""
    requirements = []
    if not text:
        return requirements
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    for part in (p.strip() for p in parts):
        if not part:
            raise bad_request(f'unable to parse requirement: found "", expected: identifier')
        match = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", part)
        if match:
            requirements.append((match.group(1), match.group(2), [v.strip() for v in match.group(3).split(",") if v.strip()]))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append((key.strip(), "!=", [value.strip()]))
        elif "==" in part or "=" in part:
            key, value = re.split("==?", part, maxsplit=1)
            requirements.append((key.strip(), "=", [value.strip()]))
        elif part.startswith("!"):
            requirements.append((part[1:].strip(), "!", []))
        elif re.match(r"^[\w./-]+$", part):
            requirements.append((part, "exists", []))
        else:
            raise bad_request(f'unable to parse requirement: "{part}"')
    return requirements


def selector_matches(requirements, labels):
    for key, op, values in requirements:
        present = key in labels
        if op == "=" and labels.get(key) != values[0]:
            return False
        if op == "!=" and present and labels[key] == values[0]:
            return False
        if op == "in" and (not present or labels[key] not in values):
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


def field_selector(text):
    requirements = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        match = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not match or match.group(1) not in ("metadata.name", "metadata.namespace"):
            raise bad_request(f'"{part}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        requirements.append((match.group(1), match.group(2) != "!=", match.group(3)))
    return requirements


def fields_match(requirements, obj):
    meta = obj.get("metadata", {})
    for field, equal, value in requirements:
        actual = meta.get(field.split(".", 1)[1], "")
        if (actual == value) != equal:
            return False
    return True


# -- patches -------------------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(document, operations):
    """RFC 6902."""
    document = clone(document)

    def parent(tokens):
        node = document
        for token in tokens[:-1]:
            node = node[int(token)] if isinstance(node, list) else node[token]
        return node

    def get(tokens):
        node = document
        for token in tokens:
            node = node[int(token)] if isinstance(node, list) else node[token]
        return node

    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    for op in operations:
        try:
            kind, tokens = op["op"], json_pointer(op["path"])
            if kind in ("add", "replace"):
                container, last = parent(tokens), tokens[-1]
                if isinstance(container, list):
                    index = len(container) if last == "-" else int(last)
                    if kind == "add":
                        container.insert(index, clone(op["value"]))
                    else:
                        container[index] = clone(op["value"])
                else:
                    if kind == "replace" and last not in container:
                        raise KeyError(last)
                    container[last] = clone(op["value"])
            elif kind == "remove":
                container, last = parent(tokens), tokens[-1]
                del container[int(last) if isinstance(container, list) else last]
            elif kind in ("move", "copy"):
                source = json_pointer(op["from"])
                value = clone(get(source))
                if kind == "move":
                    container = parent(source)
                    del container[int(source[-1]) if isinstance(container, list) else source[-1]]
                json_patch_apply_add(document, tokens, value)
            elif kind == "test":
                if get(tokens) != op["value"]:
                    raise APIError(422, "Invalid", f"the server rejected our request due to an error in our request: test failed at {op['path']}")
            else:
                raise bad_request(f"unknown json patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise APIError(422, "Invalid", f"the server rejected our request due to an error in our request: {op}: {error}")
    return document


def json_patch_apply_add(document, tokens, value):
    node = document
    for token in tokens[:-1]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if isinstance(node, list):
        node.insert(len(node) if tokens[-1] == "-" else int(tokens[-1]), value)
    else:
        node[tokens[-1]] = value


def leaves(value, prefix=()):
    """Paths to the leaves of a JSON value (lists are atomic: one leaf)."""
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from leaves(child, prefix + (key,))
    else:
        yield prefix


def get_path(value, path):
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None, False
        value = value[key]
    return value, True


def remove_path(value, path):
    for key in path[:-1]:
        if not isinstance(value, dict) or key not in value:
            return
        value = value[key]
    if isinstance(value, dict):
        value.pop(path[-1], None)


IGNORED_OWNERSHIP = {("metadata", "resourceVersion"), ("metadata", "uid"), ("metadata", "generation"),
                     ("metadata", "creationTimestamp"), ("metadata", "managedFields"), ("apiVersion",), ("kind",),
                     ("metadata", "name"), ("metadata", "namespace")}

# -- the store -----------------------------------------------------------------------------


class Store:
    def __init__(self, history_limit):
        # One mutex for the whole store; a condition per resource on it, so a write wakes only
        # the watches of its resource (as the real server's per-resource watch cache fans out),
        # not every open watch.
        self.mutex = threading.RLock()
        self.lock = self.mutex           # `with store.lock:` (the mutex itself: no Python frame per use)
        self.changed = {}            # (group, plural) -> Condition on mutex
        self.resources = {}          # (group, version, plural) -> Resource
        self.objects = {}            # (group, plural) -> {(namespace, name): object}
        self.owners = {}             # (group, plural, namespace, name) -> {path: manager}
        self.revision = 1
        self.history = []            # (revision, group, plural, type, object)
        self.compacted = 0           # events at or below this revision are gone
        self.history_limit = history_limit
        self.watch_epoch = 0         # bumped to drop every open watch
        self.deployment_controller = None  # --deployment-controller
        self.garbage_collect = False       # --gc
        for resource in BUILTIN:
            self.serve(resource)
        for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.objects[("", "namespaces")][("", namespace)] = self.stamp(
                {"metadata": {"name": namespace}, "spec": {"finalizers": ["kubernetes"]},
                 "status": {"phase": "Active"}}, generation=False)

    def serve(self, resource):
        self.resources[(resource.group, resource.version, resource.plural)] = resource
        self.objects.setdefault(resource.store_key, {})

    def stamp(self, obj, generation):
        self.revision += 1
        meta = obj.setdefault("metadata", {})
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(self.revision)
        meta["creationTimestamp"] = now_rfc3339()
        if generation:
            meta["generation"] = 1
        return obj

    def find(self, group, version, plural):
        resource = self.resources.get((group, version, plural))
        if resource is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural} if plural else None)
        return resource

    def record(self, resource, kind, obj):
        self.history.append((self.revision, resource.group, resource.plural, kind, clone(obj)))
        if self.deployment_controller is not None and (resource.group, resource.plural) == ("apps", "deployments") and kind != "DELETED":
            self.deployment_controller.changed(obj)
        if self.garbage_collect and kind == "ADDED" and obj["metadata"].get("ownerReferences"):
            # The garbage collector's absent-owner rule: a dependent whose owners are all gone
            # (made after its owner was deleted) is deleted too, a moment later.
            if not any(self.owner_exists(obj["metadata"].get("namespace", ""), ref) for ref in obj["metadata"]["ownerReferences"]):
                key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                threading.Timer(0.05, self.collect_orphan, args=(resource, key, obj["metadata"]["uid"])).start()
        if len(self.history) > self.history_limit:
            drop = len(self.history) - self.history_limit
            self.compacted = self.history[drop - 1][0]
            del self.history[:drop]
        self.changed_condition((resource.group, resource.plural)).notify_all()

    def owner_exists(self, namespace, ref):
        group = ref.get("apiVersion", "").rsplit("/", 1)[0] if "/" in ref.get("apiVersion", "") else ""
        for resource in self.resources.values():
            if resource.group == group and resource.kind == ref.get("kind"):
                owner = self.objects.get(resource.store_key, {}).get((namespace if resource.namespaced else "", ref.get("name")))
                return owner is not None and owner["metadata"].get("uid") == ref.get("uid")
        return False

    def collect_orphan(self, resource, key, uid):
        with self.lock:
            objects = self.objects.get(resource.store_key, {})
            obj = objects.get(key)
            if obj is None or obj["metadata"].get("uid") != uid:
                return
            if any(self.owner_exists(key[0], ref) for ref in obj["metadata"].get("ownerReferences") or []):
                return
            del objects[key]
            self.owners.pop((resource.group, resource.plural) + key, None)
            self.revision += 1
            obj = clone(obj)
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self.record(resource, "DELETED", obj)

    def changed_condition(self, store_key):
        condition = self.changed.get(store_key)
        if condition is None:
            condition = self.changed[store_key] = threading.Condition(self.mutex)
        return condition

    def wake_all_watches(self):
        for condition in self.changed.values():
            condition.notify_all()

    def compact(self):
        with self.lock:
            self.compacted = self.revision
            self.history.clear()
            self.wake_all_watches()

    # CRDs make their resources served (established at once: no controller delay).
    def establish(self, crd):
        spec = crd["spec"]
        names = spec["names"]
        for version in spec.get("versions", []):
            key = (spec["group"], version["name"], names["plural"])
            if version.get("served", True):
                self.serve(Resource(spec["group"], version["name"], names["plural"], names["kind"],
                                    namespaced=spec.get("scope") == "Namespaced",
                                    status="status" in (version.get("subresources") or {}),
                                    generation=True, unconditional=False,
                                    schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                                    singular=names.get("singular"), short=names.get("shortNames", []),
                                    crd=crd["metadata"]["name"]))
            else:
                self.resources.pop(key, None)
        crd["status"] = {
            "acceptedNames": clone(names),
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
                 "lastTransitionTime": now_rfc3339()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()},
            ],
        }

    def withdraw(self, crd):
        spec = crd["spec"]
        for key in [k for k, r in self.resources.items() if r.crd == crd["metadata"]["name"]]:
            del self.resources[key]
        self.objects.pop((spec["group"], spec["names"]["plural"]), None)


# -- the HTTP server -----------------------------------------------------------------------


class Faults:
    """Test-controlled failures: the next `count` requests whose path contains `match` (and,
    when given, whose method is `method`) fail with `code`; every response waits `delay`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []
        self.delay = 0.0

    def take(self, method, path):
        with self.lock:
            for rule in self.rules:
                if rule["count"] > 0 and rule.get("match", "") in path and rule.get("method", method) == method:
                    rule["count"] -= 1
                    return rule
        return None


class Headers(dict):
    """A request's headers by lower-cased name: all the server asks of them is `get`."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


def parse_headers(fp, _class=None):
    """http.client.parse_headers without the email package: its parser was a tenth of the fake's
    CPU time. The same limits: lines of 64 KiB, 100 headers."""
    headers = Headers()
    while True:
        line = fp.readline(65537)
        if len(line) > 65536:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        if len(headers) >= 100:
            raise http.client.HTTPException("got more than 100 headers")
        name, colon, value = line.decode("iso-8859-1").partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()


# BaseHTTPRequestHandler.parse_request reads the headers through http.client.
http.client.parse_headers = parse_headers


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver/1.0"

    def date_time_string(self, timestamp=None):
        if timestamp is not None:
            return super().date_time_string(timestamp)
        return now_texts()[2]

    def log_message(self, format, *args):
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    # -- plumbing

    def setup(self):
        # As kube-apiserver (Go sets TCP_NODELAY on every connection): without it, a response
        # written as headers then body waits for the client's delayed ACK (40 ms on Linux).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    @property
    def store(self):
        return self.server.store

    def send_json(self, code, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        raw = self.raw_body
        if not raw:
            return None
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        try:
            if content_type == "application/apply-patch+yaml":
                return parse_yaml_or_json(raw.decode())
            return json.loads(raw)
        except Exception as error:  # noqa: BLE001 - any parse failure is a 400
            raise bad_request(f"the object provided is unrecognized: {error}")

    def authenticated(self):
        if self.server.token and self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        # The client certificate belongs to the connection (one handler): looked at once.
        if not hasattr(self, "certified"):
            try:
                self.certified = bool(self.connection.getpeercert())
            except (AttributeError, ValueError):
                self.certified = False
        return self.certified

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        # Read whatever is refused too: an unread body would be taken for the next request.
        length = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(length) if length else b""
        try:
            if not self.authenticated():
                raise APIError(401, "Unauthorized", "Unauthorized")
            if url.path.startswith("/fake/"):
                return self.control(method, url.path, query)
            fault = self.server.faults.take(method, url.path)
            if self.server.faults.delay:
                time.sleep(self.server.faults.delay)
            if self.server.write_latency and method != "GET":
                # The storage round trip of a write (etcd's, or K3s's SQLite through kine),
                # before it commits: the object and its watch event appear after it.
                time.sleep(self.server.write_latency)
            if self.server.write_cpu and method != "GET":
                # What a write costs a real server beside the wait (admission, validation,
                # encoding, etcd's side): busy CPU, so that an operator's writes cost this
                # server what they cost a real one, not only time.
                spin(self.server.write_cpu)
            if fault:
                headers = {"Retry-After": str(fault["retryAfter"])} if fault.get("retryAfter") is not None else {}
                reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}.get(fault["code"], "InternalError")
                raise APIError(fault["code"], reason, fault.get("message", f"injected failure ({fault['code']})"), headers=headers)
            self.route(method, url.path, query)
        except APIError as error:
            self.send_json(error.code, error.status(), error.headers)
        except Exception as error:  # noqa: BLE001 - a fault of the fake's, answered, not a dropped connection
            traceback.print_exc()
            self.send_json(500, APIError(500, "InternalError", f"fake-apiserver: {type(error).__name__}: {error}").status())

    # -- test controls

    def control(self, method, path, query):
        body = self.read_body() if method in ("POST", "PUT") else None
        if path == "/fake/faults" and method == "POST":
            with self.server.faults.lock:
                self.server.faults.rules.append(dict(body, count=body.get("count", 1)))
            return self.send_json(200, {"ok": True})
        if path == "/fake/faults" and method == "DELETE":
            with self.server.faults.lock:
                self.server.faults.rules.clear()
                self.server.faults.delay = 0.0
            return self.send_json(200, {"ok": True})
        if path == "/fake/delay" and method == "POST":
            self.server.faults.delay = float(body.get("seconds", 0))
            return self.send_json(200, {"ok": True})
        if path == "/fake/drop-watches" and method == "POST":
            with self.store.lock:
                self.store.watch_epoch += 1
                self.store.wake_all_watches()
            return self.send_json(200, {"ok": True})
        if path == "/fake/compact" and method == "POST":
            self.store.compact()
            return self.send_json(200, {"ok": True, "compacted": self.store.compacted})
        if path == "/fake/stats" and method == "GET":
            with self.server.stats_lock:
                return self.send_json(200, {"requests": dict(self.server.stats), "byResource": dict(self.server.stats_by),
                                            "byAgent": {agent: dict(counts) for agent, counts in self.server.stats_agents.items()},
                                            "watches": self.server.watches,
                                            "controllerWrites": self.store.deployment_controller.writes if self.store.deployment_controller else 0})
        raise APIError(404, "NotFound", f"no control {method} {path}")

    # -- routing

    def route(self, method, path, query):
        parts = [p for p in path.split("/") if p]
        what = f"{method} {stats_resource(parts, query)}"
        agent = (self.headers.get("User-Agent") or "unknown").split("/")[0].split(" ")[0]
        with self.server.stats_lock:
            self.server.stats[method] = self.server.stats.get(method, 0) + 1
            self.server.stats_by[what] = self.server.stats_by.get(what, 0) + 1
            by_agent = self.server.stats_agents.setdefault(agent, {})
            by_agent[what] = by_agent.get(what, 0) + 1
        if path in ("/healthz", "/readyz", "/livez"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(data)
            return
        if path == "/version":
            return self.send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "linux/amd64"})
        if parts == ["api"]:
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if parts == ["apis"]:
            return self.send_json(200, self.discovery_groups())
        if parts[:1] == ["api"]:
            group, rest = "", parts[1:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            group, rest = parts[1], parts[2:]
        else:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return self.send_json(200, self.discovery_group(group))
        version, rest = rest[0], rest[1:]
        if not rest:
            return self.send_json(200, self.discovery_resources(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        if len(rest) > 3:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        with self.store.lock:
            resource = self.store.find(group, version, plural)
        if resource.namespaced is False and namespace is not None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if sub not in (None, "status"):
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if sub == "status" and not resource.status:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                if query.get("watch") in ("1", "true"):
                    return self.watch(resource, namespace, query)
                return self.send_json(200, self.list(resource, namespace, query))
            if method == "POST":
                return self.create(resource, namespace, self.read_body(), query)
            if method == "DELETE":
                raise APIError(405, "MethodNotAllowed", "deletecollection is not supported by the fake")
            raise APIError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
        if method == "GET":
            with self.store.lock:
                return self.send_json(200, self.externalize(resource, self.get(resource, namespace, name)))
        if method == "PUT":
            return self.update(resource, namespace, name, self.read_body(), sub, query)
        if method == "PATCH":
            return self.patch(resource, namespace, name, self.read_body(), sub, query)
        if method == "DELETE":
            return self.delete(resource, namespace, name, self.read_body() or {}, query)
        raise APIError(405, "MethodNotAllowed", f"{method} is not allowed")

    # -- discovery

    def discovery_groups(self):
        groups = {}
        with self.store.lock:
            for resource in self.store.resources.values():
                if resource.group:
                    groups.setdefault(resource.group, set()).add(resource.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(vs)],
             "preferredVersion": {"groupVersion": f"{g}/{sorted(vs)[-1]}", "version": sorted(vs)[-1]}}
            for g, vs in sorted(groups.items())]}

    def discovery_group(self, group):
        listing = self.discovery_groups()
        for entry in listing["groups"]:
            if entry["name"] == group:
                return dict(entry, kind="APIGroup", apiVersion="v1")
        raise APIError(404, "NotFound", "the server could not find the requested resource")

    def discovery_resources(self, group, version):
        with self.store.lock:
            served = [r for r in self.store.resources.values() if r.group == group and r.version == version]
        if not served:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for r in sorted(served, key=lambda r: r.plural):
            resources.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                              "verbs": verbs, **({"shortNames": r.short} if r.short else {})})
            if r.status:
                resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # -- reads

    def externalize(self, resource, obj):
        # A shallow copy: stored objects are never changed in place (a write stores a new one,
        # and whoever changes what this returns copies it first: merge_patch, json_patch, apply).
        out = dict(obj)
        out["apiVersion"] = resource.api_version
        out["kind"] = resource.kind
        return out

    def get(self, resource, namespace, name):
        obj = self.store.objects.get(resource.store_key, {}).get((namespace or "", name))
        if obj is None:
            raise not_found(resource, name)
        return obj

    def selected(self, resource, namespace, query):
        labels = parse_selector(query.get("labelSelector", ""))
        fields = field_selector(query.get("fieldSelector", ""))
        items = []
        for (ns, _), obj in sorted(self.store.objects.get(resource.store_key, {}).items()):
            if namespace is not None and ns != namespace:
                continue
            if selector_matches(labels, obj["metadata"].get("labels") or {}) and fields_match(fields, obj):
                items.append(obj)
        return items

    def list(self, resource, namespace, query):
        with self.store.lock:
            items = self.selected(resource, namespace, query)
            revision = self.store.revision
            start = 0
            token = query.get("continue")
            if token:
                try:
                    state = json.loads(base64.b64decode(token))
                    start, token_revision = int(state["start"]), int(state["rv"])
                except Exception:  # noqa: BLE001
                    raise bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
                if token_revision <= self.store.compacted:
                    raise APIError(410, "Expired", "The provided continue parameter is too old to display a consistent list result. "
                                   "You can start a new list without the continue parameter, or use the continue token in this response "
                                   "to retrieve the remainder of the results. Continuing with the provided token results in an "
                                   "inconsistent list - objects that were created, modified, or deleted between the time the first "
                                   "chunk was returned and now may show up in the list.")
                revision = token_revision
            limit = int(query.get("limit") or 0)
            page = items[start:start + limit] if limit > 0 else items[start:]
            meta = {"resourceVersion": str(revision)}
            if limit > 0 and start + limit < len(items):
                meta["continue"] = base64.b64encode(json.dumps({"start": start + limit, "rv": revision}).encode()).decode()
                meta["remainingItemCount"] = len(items) - start - limit
            body_items = []
            for obj in page:
                item = clone(obj)
                if resource.crd:  # custom resources' items carry apiVersion and kind; built-in ones do not
                    item["apiVersion"], item["kind"] = resource.api_version, resource.kind
                body_items.append(item)
            return {"kind": f"{resource.kind}List", "apiVersion": resource.api_version, "metadata": meta, "items": body_items}

    def watch(self, resource, namespace, query):
        labels = parse_selector(query.get("labelSelector", ""))
        fields = field_selector(query.get("fieldSelector", ""))
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion", "")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with self.server.stats_lock:
            self.server.watches += 1

        def send(event):
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def visible(obj):
            return (namespace is None or obj["metadata"].get("namespace", "") == (namespace or "")) \
                and selector_matches(labels, obj["metadata"].get("labels") or {}) and fields_match(fields, obj)

        deadline = time.monotonic() + timeout
        try:
            with self.store.lock:
                epoch = self.store.watch_epoch
                pending = []
                if since in ("", "0"):
                    # "Get state and start at most recent": synthetic ADDED events first.
                    cursor = self.store.revision
                    pending = [("ADDED", obj) for obj in self.selected(resource, namespace, query)]
                else:
                    try:
                        cursor = int(since)
                    except ValueError:
                        raise bad_request(f"invalid resource version: {since}")
                    if cursor < self.store.compacted:
                        pending = [("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                              "message": f"too old resource version: {cursor} ({self.store.compacted + 1})",
                                              "reason": "Expired", "code": 410})]
                        cursor = None
            last_sent = time.monotonic()
            while True:
                for kind, obj in pending:
                    send({"type": kind, "object": self.externalize(resource, obj) if kind != "ERROR" else obj})
                    last_sent = time.monotonic()
                if cursor is None:
                    break
                pending = []
                with self.store.lock:
                    while True:
                        if self.store.watch_epoch != epoch or time.monotonic() >= deadline or self.server.stopping:
                            raise StopIteration
                        # History is ordered by revision: start after the cursor, not at the beginning.
                        fresh = self.store.history[bisect.bisect_right(self.store.history, cursor, key=lambda h: h[0]):]
                        if cursor < self.store.compacted:
                            pending = [("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                                  "message": f"too old resource version: {cursor} ({self.store.compacted + 1})",
                                                  "reason": "Expired", "code": 410})]
                            cursor = None
                            break
                        for revision, group, plural, kind, obj in fresh:
                            cursor = revision
                            if (group, plural) == resource.store_key and visible(obj):
                                pending.append((kind, obj))
                        if pending:
                            break
                        if bookmarks and time.monotonic() - last_sent >= self.server.bookmark_interval:
                            cursor = self.store.revision
                            pending = [("BOOKMARK", {"metadata": {"resourceVersion": str(cursor)}})]
                            break
                        self.store.changed_condition(resource.store_key).wait(timeout=0.2)
                if pending and pending[0][0] == "BOOKMARK":
                    send({"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": resource.api_version,
                                                          "metadata": {"resourceVersion": pending[0][1]["metadata"]["resourceVersion"]}}})
                    last_sent = time.monotonic()
                    pending = []
        except StopIteration:
            pass
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
            return
        finally:
            with self.server.stats_lock:
                self.server.watches -= 1
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    # -- writes

    def prepare_new(self, resource, namespace, body):
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        if body.get("kind") not in (None, resource.kind) or body.get("apiVersion") not in (None, resource.api_version):
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version ({resource.api_version})"
                              if body.get("apiVersion") != resource.api_version else
                              f"the kind in the data ({body.get('kind')}) does not match the expected kind ({resource.kind})")
        obj = clone(body)
        meta = obj.setdefault("metadata", {})
        if resource.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        return obj

    def validate(self, resource, obj):
        causes = []
        validate_metadata(resource, obj, causes)
        if resource.schema is not None:
            full = dict(obj, apiVersion=resource.api_version, kind=resource.kind)
            # The server validates metadata, apiVersion and kind itself. A shallow copy: the
            # validator reads the schema, never writes it (a deep copy of a large CRD schema on
            # every write was a sixth of the fake's time).
            schema = dict(resource.schema)
            schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items()
                                    if k not in ("metadata", "apiVersion", "kind")}
            checked = schema_validate(schema, {k: v for k, v in full.items() if k not in ("metadata", "apiVersion", "kind")},
                                      "", causes)
            for key in list(obj):
                if key not in ("metadata",) and key not in checked:
                    del obj[key]  # pruned
        else:
            validate_builtin(resource, obj, causes)
        if causes:
            raise invalid(resource, obj.get("metadata", {}).get("name", ""), causes)

    def create(self, resource, namespace, body, query):
        manager = query.get("fieldManager") or self.user_agent_manager()
        with self.store.lock:
            if resource.namespaced:
                if namespace is None:
                    raise APIError(404, "NotFound", "the server could not find the requested resource")
                if ("", namespace) not in self.store.objects[("", "namespaces")]:
                    raise APIError(404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
            obj = self.prepare_new(resource, namespace, body)
            meta = obj["metadata"]
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation", "managedFields"):
                meta.pop(field, None)
            if resource.status and resource.crd:
                obj.pop("status", None)  # status is set through /status only
            self.validate(resource, obj)
            if resource.kind == "CustomResourceDefinition":
                self.check_crd_conflicts(obj)
            objects = self.store.objects.setdefault(resource.store_key, {})
            key = (meta.get("namespace", ""), meta["name"])
            if key in objects:
                raise APIError(409, "AlreadyExists", f'{resource.qualified} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": resource.group, "kind": resource.plural})
            if query.get("dryRun") == "All":
                return self.send_json(201, self.externalize(resource, obj))
            self.store.stamp(obj, generation=resource.generation or bool(resource.crd))
            if resource.kind == "CustomResourceDefinition":
                self.store.establish(obj)
            if resource.kind == "Service":
                obj.setdefault("spec", {}).setdefault("clusterIP", f"10.43.{random.randint(0, 255)}.{random.randint(1, 254)}")
                obj["spec"].setdefault("type", "ClusterIP")
            objects[key] = obj
            self.own(resource, key, obj, manager, None)
            self.store.record(resource, "ADDED", obj)
            self.send_json(201, self.externalize(resource, obj))

    def check_crd_conflicts(self, crd):
        spec = crd["spec"]
        for (group, _, plural), resource in self.store.resources.items():
            if group == spec["group"] and plural == spec["names"]["plural"] and resource.crd != crd["metadata"]["name"]:
                raise invalid(self.store.resources[("apiextensions.k8s.io", "v1", "customresourcedefinitions")],
                              crd["metadata"]["name"], [cause("FieldValueInvalid", "spec.names.plural", "Invalid value: already served")])

    def user_agent_manager(self):
        agent = self.headers.get("User-Agent") or "unknown"
        return agent.split("/")[0]

    def own(self, resource, key, new, manager, old):
        """Field ownership for server-side apply: the manager owns the leaves it changed."""
        owners = self.store.owners.setdefault((resource.group, resource.plural) + key, {})
        for path in leaves(new):
            if path in IGNORED_OWNERSHIP or path[:1] == ("status",) and resource.status:
                continue
            value, _ = get_path(new, path)
            before, existed = get_path(old, path) if old is not None else (None, False)
            if old is None or not existed or before != value:
                owners[path] = manager
        for path in list(owners):
            if get_path(new, path)[1] is False:
                del owners[path]

    def replace(self, resource, key, old, new, sub, manager):
        """Stores `new` in place of `old` with the API server's update rules; returns it."""
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if meta.get("uid") not in (None, old_meta["uid"]):
            raise APIError(409, "Conflict", f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}")
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["name"], meta["namespace"] = old_meta["name"], old_meta.get("namespace")
        if meta["namespace"] is None:
            meta.pop("namespace")
        if sub == "status":
            status = new.get("status")
            new = clone(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif resource.status:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        if "deletionTimestamp" in old_meta:
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(resource, old_meta["name"], [cause("FieldValueForbidden", "metadata.finalizers",
                                                                  "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers " + json.dumps(sorted(added)))])
        self.validate(resource, new)
        if resource.generation or resource.crd:
            ignore = {"metadata", "status"} if resource.status else {"metadata"}
            if {k: v for k, v in new.items() if k not in ignore} != {k: v for k, v in old.items() if k not in ignore}:
                new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if resource.kind == "Service":
            new.setdefault("spec", {}).setdefault("clusterIP", old.get("spec", {}).get("clusterIP"))
        comparable = lambda o: {k: v for k, v in o.items() if k != "metadata"} | {"metadata": {k: v for k, v in o["metadata"].items() if k != "resourceVersion"}}
        if comparable(new) == comparable(old):
            return old  # a no-op update writes nothing (same resourceVersion, no event)
        self.store.revision += 1
        new["metadata"]["resourceVersion"] = str(self.store.revision)
        objects = self.store.objects[resource.store_key]
        if "deletionTimestamp" in new["metadata"] and not new["metadata"].get("finalizers"):
            del objects[key]
            self.store.owners.pop((resource.group, resource.plural) + key, None)
            self.forget(resource, new)
            self.store.record(resource, "DELETED", new)
            if self.server.garbage_collect:
                self.collect(new["metadata"]["uid"])
            return new
        objects[key] = new
        if sub != "status":
            self.own(resource, key, new, manager, old)
        if resource.kind == "CustomResourceDefinition":
            self.store.establish(new)
        self.store.record(resource, "MODIFIED", new)
        return new

    def forget(self, resource, obj):
        if resource.kind == "CustomResourceDefinition":
            self.store.withdraw(obj)

    def update(self, resource, namespace, name, body, sub, query):
        manager = query.get("fieldManager") or self.user_agent_manager()
        with self.store.lock:
            key = (namespace or "", name)
            old = self.get(resource, namespace, name)
            new = self.prepare_new(resource, namespace, body)
            if new["metadata"].get("name") not in (None, name):
                raise bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (new["metadata"].get("name"), name))
            version = new["metadata"].get("resourceVersion")
            if not version and not resource.unconditional:
                raise invalid(resource, name, [cause("FieldValueInvalid", "metadata.resourceVersion",
                                                     "Invalid value: 0x0: must be specified for an update")])
            if version and version != old["metadata"]["resourceVersion"]:
                raise conflict(resource, name)
            stored = self.replace(resource, key, old, new, sub, manager)
            self.send_json(200, self.externalize(resource, stored))

    def patch(self, resource, namespace, name, body, sub, query):
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        manager = query.get("fieldManager") or self.user_agent_manager()
        with self.store.lock:
            key = (namespace or "", name)
            objects = self.store.objects.setdefault(resource.store_key, {})
            old = objects.get(key)
            if content_type == "application/apply-patch+yaml":
                if not query.get("fieldManager"):
                    raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
                return self.apply(resource, namespace, name, body, sub, query, old)
            if old is None:
                raise not_found(resource, name)
            current = self.externalize(resource, old)
            if content_type == "application/merge-patch+json":
                patched = merge_patch(current, body)
            elif content_type == "application/json-patch+json":
                patched = json_patch(current, body)
            elif content_type == "application/strategic-merge-patch+json":
                if resource.crd:
                    raise APIError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types "
                                   "include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
                patched = merge_patch(current, body)  # lists replaced whole: see README
            else:
                raise APIError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: "
                               "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
            version = (patched.get("metadata") or {}).get("resourceVersion")
            if version and version != old["metadata"]["resourceVersion"]:
                raise conflict(resource, name)
            new = self.prepare_new(resource, namespace, patched)
            stored = self.replace(resource, key, old, new, sub, manager)
            self.send_json(200, self.externalize(resource, stored))

    def apply(self, resource, namespace, name, body, sub, query, old):
        """Server-side apply, simplified: see README (ownership by leaf path, lists atomic)."""
        manager, force = query["fieldManager"], query.get("force") in ("1", "true")
        if not isinstance(body, dict):
            raise bad_request("apply patch must be an object")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise bad_request("the name of the object does not match the name on the URL")
        body.setdefault("metadata", {})["name"] = name
        if old is None:
            if sub == "status":
                raise not_found(resource, name)
            self.create_applied(resource, namespace, body, manager)
            return
        key = (namespace or "", name)
        owners = self.store.owners.setdefault((resource.group, resource.plural) + key, {})
        current = self.externalize(resource, old)
        applied = [p for p in leaves({k: v for k, v in body.items() if k not in ("apiVersion", "kind")})
                   if p not in IGNORED_OWNERSHIP]
        conflicts = []
        for path in applied:
            value, _ = get_path(body, path)
            before, existed = get_path(current, path)
            owner = owners.get(path)
            if existed and before != value and owner not in (None, manager):
                conflicts.append((path, owner))
        if conflicts and not force:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{owner}"', "field": "." + ".".join(path)}
                      for path, owner in conflicts]
            raise APIError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: " +
                           "; ".join(f'conflict with "{o}": .{".".join(p)}' for p, o in conflicts), {"causes": causes})
        merged = clone(current)
        # Fields this manager applied before and no longer applies are removed (if still its own).
        for path, owner in list(owners.items()):
            if owner == manager and path not in applied and not any(path[:len(a)] == a for a in applied):
                remove_path(merged, path)
        merged = merge_patch(merged, strip_nulls(body))
        new = self.prepare_new(resource, namespace, merged)
        stored = self.replace(resource, key, old, new, sub, manager)
        for path in applied:
            owners[path] = manager
        self.send_json(200, self.externalize(resource, stored))

    def create_applied(self, resource, namespace, body, manager):
        query = {"fieldManager": manager}
        self.create(resource, namespace, body, query)

    def delete(self, resource, namespace, name, options, query):
        with self.store.lock:
            key = (namespace or "", name)
            old = self.get(resource, namespace, name)
            preconditions = options.get("preconditions") or {}
            if preconditions.get("uid") not in (None, old["metadata"]["uid"]):
                raise APIError(409, "Conflict", f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {old['metadata']['uid']}")
            if preconditions.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]):
                raise APIError(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: {preconditions['resourceVersion']}, ResourceVersion in object meta: {old['metadata']['resourceVersion']}")
            policy = options.get("propagationPolicy") or query.get("propagationPolicy")
            if policy not in (None, "Background", "Foreground", "Orphan"):
                raise invalid(resource, name, [cause("FieldValueNotSupported", "propagationPolicy", f'Unsupported value: "{policy}"')])
            finalizers = list(old["metadata"].get("finalizers") or [])
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            objects = self.store.objects[resource.store_key]
            if finalizers:
                if "deletionTimestamp" in old["metadata"]:
                    return self.send_json(202 if policy else 200, self.externalize(resource, old))
                new = clone(old)
                new["metadata"]["finalizers"] = finalizers
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self.store.revision += 1
                new["metadata"]["resourceVersion"] = str(self.store.revision)
                objects[key] = new
                self.store.record(resource, "MODIFIED", new)
                return self.send_json(202 if policy else 200, self.externalize(resource, new))
            del objects[key]
            self.store.owners.pop((resource.group, resource.plural) + key, None)
            self.store.revision += 1
            gone = clone(old)
            gone["metadata"]["resourceVersion"] = str(self.store.revision)
            self.forget(resource, gone)
            self.store.record(resource, "DELETED", gone)
            if self.server.garbage_collect:
                self.collect(gone["metadata"]["uid"])
            self.send_json(200, self.externalize(resource, gone))

    def collect(self, uid):
        """--gc: background cascading deletion of dependents (kube-controller-manager's job)."""
        for (group, plural), objects in list(self.store.objects.items()):
            resource = next((r for r in self.store.resources.values() if (r.group, r.plural) == (group, plural)), None)
            for key, obj in list(objects.items()):
                references = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in references):
                    del objects[key]
                    self.store.revision += 1
                    obj["metadata"]["resourceVersion"] = str(self.store.revision)
                    if resource:
                        self.store.record(resource, "DELETED", obj)
                    self.collect(obj["metadata"]["uid"])


def spin(seconds):
    """Burns `seconds` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def stats_resource(parts, query):
    """What a request is about, for /fake/stats' byResource: `deployments.apps`,
    `deployments.capstan.dev/status`, `events`, `watch deployments.apps` ..."""
    if parts[:1] == ["api"]:
        rest = parts[2:]
        group = ""
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
        group = parts[1]
    else:
        return "/" + "/".join(parts[:2])
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return "/" + "/".join(parts)
    name = rest[0] + (("." + group) if group else "")
    if len(rest) >= 3:
        name += "/" + rest[2]
    if query.get("watch") in ("1", "true"):
        name = "watch " + name
    return name


class DeploymentController:
    """--deployment-controller: kube-controller-manager's Deployment controller as an
    operator sees it: after a change of an apps/v1 Deployment's spec (its generation), status
    writes as the real one makes them (observed generation and replica counts, a conditions'
    lastUpdateTime refresh, then the replicas ready and available), a few milliseconds apart.
    No ReplicaSets or pods: only the status churn its owner's watch sees."""

    STEP_SECONDS = 0.02

    def __init__(self, store, ready=True):
        self.store = store
        self.ready = ready           # False: pods never become ready (a cluster without nodes)
        self.pending = {}            # (namespace, name) -> generation
        self.condition = threading.Condition()
        self.writes = 0

    def start(self):
        threading.Thread(target=self.run, daemon=True).start()

    def changed(self, obj):
        """Called under the store lock on every recorded apps/v1 Deployment change."""
        generation = obj["metadata"].get("generation", 1)
        if (obj.get("status") or {}).get("observedGeneration") == generation:
            return
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        with self.condition:
            if self.pending.get(key) != generation:
                self.pending[key] = generation
                self.condition.notify()

    def run(self):
        while True:
            with self.condition:
                while not self.pending:
                    self.condition.wait()
                key, generation = next(iter(self.pending.items()))
                del self.pending[key]
            threading.Thread(target=self.roll, args=(key, generation), daemon=True).start()

    def roll(self, key, generation):
        def conditions(available, progressing, now):
            return [
                {"type": "Available", "status": "True" if available else "False", "lastUpdateTime": now, "lastTransitionTime": now,
                 "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                 "message": "Deployment has minimum availability." if available else "Deployment does not have minimum availability."},
                {"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now, "reason": progressing,
                 "message": f'ReplicaSet "{key[1]}" ' + ("has successfully progressed." if progressing == "NewReplicaSetAvailable" else "is progressing.")},
            ]

        def step(status_of):
            time.sleep(self.STEP_SECONDS)
            with self.store.lock:
                objects = self.store.objects.get(("apps", "deployments"), {})
                obj = objects.get(key)
                if obj is None or obj["metadata"].get("generation", 1) != generation:
                    return False
                new = clone(obj)
                replicas = (obj.get("spec") or {}).get("replicas", 1)
                new["status"] = status_of(replicas, now_rfc3339())
                self.store.revision += 1
                new["metadata"]["resourceVersion"] = str(self.store.revision)
                objects[key] = new
                resource = next(r for r in self.store.resources.values() if (r.group, r.plural) == ("apps", "deployments"))
                self.store.record(resource, "MODIFIED", new)
                self.writes += 1
                return True

        steps = [
            lambda n, now: {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "unavailableReplicas": n,
                            "conditions": conditions(False, "ReplicaSetUpdated", now)},
            lambda n, now: {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "unavailableReplicas": n,
                            "conditions": conditions(False, "ReplicaSetUpdated", now)},
            lambda n, now: {"observedGeneration": generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                            "conditions": conditions(True, "NewReplicaSetAvailable", now)},
        ]
        for status_of in steps if self.ready else steps[:2]:
            if not step(status_of):
                return


def traefik_crds():
    """Traefik's TraefikService and IngressRoute CRDs as K3s installs them (traefik.io/v1alpha1),
    with the schema of the fields Capstan writes (Traefik's own CRDs specify many more)."""
    def crd(plural, kind, spec):
        schema = {"type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
            "spec": spec}, "required": ["spec"]}
        return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.traefik.io"},
                "spec": {"group": "traefik.io", "scope": "Namespaced",
                         "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": kind + "List"},
                         "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                                       "schema": {"openAPIV3Schema": schema}}]}}
    service = {"type": "object", "required": ["name"], "x-kubernetes-preserve-unknown-fields": True, "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "kind": {"type": "string", "enum": ["Service", "TraefikService"]},
        "port": {"x-kubernetes-int-or-string": True},
        "weight": {"type": "integer", "minimum": 0}}}
    return [
        crd("traefikservices", "TraefikService", {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {
            "weighted": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {
                "services": {"type": "array", "items": service}}}}}),
        crd("ingressroutes", "IngressRoute", {"type": "object", "required": ["routes"], "x-kubernetes-preserve-unknown-fields": True, "properties": {
            "entryPoints": {"type": "array", "items": {"type": "string"}},
            "routes": {"type": "array", "items": {"type": "object", "required": ["match", "kind"],
                                                   "x-kubernetes-preserve-unknown-fields": True, "properties": {
                "match": {"type": "string", "minLength": 1}, "kind": {"type": "string", "enum": ["Rule"]},
                "services": {"type": "array", "items": service}}}}}}),
    ]


def strip_nulls(value):
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items()}
    return value


def parse_yaml_or_json(text):
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    try:
        import yaml  # PyYAML, when installed
        return yaml.safe_load(text)
    except ImportError:
        raise bad_request("apply patches must be JSON (this fake reads YAML only with PyYAML installed)")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


# -- certificates --------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN=capstan,
    O=system:masters, as K3s's admin kubeconfig has)."""
    if all(os.path.exists(os.path.join(directory, f)) for f in ("ca.crt", "server.crt", "client.crt")):
        return
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
            "-subj", "/CN=fake-apiserver-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    with open(os.path.join(directory, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    with open(os.path.join(directory, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/O=system:masters/CN=capstan")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject,
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "3650", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)


def write_kubeconfigs(directory, port, token):
    def data(name):
        with open(os.path.join(directory, name), "rb") as f:
            return base64.b64encode(f.read()).decode()

    server = f"https://127.0.0.1:{port}"
    user = {"client-certificate-data": data("client.crt"), "client-key-data": data("client.key")}
    if token:
        user = {"token": token}
    inline = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server, "certificate-authority-data": data("ca.crt")}}],
        "users": [{"name": "fake-admin", "user": user}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-admin", "namespace": "default"}}],
        "preferences": {},
    }
    files = clone(inline)
    files["clusters"][0]["cluster"] = {"server": server, "certificate-authority": os.path.join(directory, "ca.crt")}
    files["users"][0]["user"] = {"client-certificate": os.path.join(directory, "client.crt"),
                                 "client-key": os.path.join(directory, "client.key")}
    for name, config in (("kubeconfig", inline), ("kubeconfig-files", files)):
        path = os.path.join(directory, name)
        with open(path + ".tmp", "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML: kubeconfig readers take it
        os.chmod(path + ".tmp", 0o600)
        os.rename(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="where certificates and kubeconfigs are written")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", help="also accept this bearer token (the kubeconfig then uses it)")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch bookmarks")
    parser.add_argument("--history", type=int, default=100000, help="watch events kept (older resourceVersions get 410)")
    parser.add_argument("--write-latency", type=float, default=0.0,
                        help="seconds every create, update, patch and delete waits before it commits (a storage round trip)")
    parser.add_argument("--gc", action="store_true", help="delete dependents of deleted owners (the garbage collector)")
    parser.add_argument("--write-cpu", type=float, default=0.0,
                        help="CPU seconds every create, update, patch and delete burns before it commits (a real server's cost of a write)")
    parser.add_argument("--deployment-controller", action="store_true",
                        help="write apps/v1 Deployment status as kube-controller-manager does (several status writes per rollout)")
    parser.add_argument("--pods-never-ready", action="store_true",
                        help="with --deployment-controller: the rollouts' pods never become ready (a cluster without nodes): "
                             "the status churn without the last, ready write")
    parser.add_argument("--traefik", action="store_true",
                        help="serve Traefik's TraefikService and IngressRoute CRDs from the start, as K3s does")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.write_latency < 0 or args.write_cpu < 0:
        parser.error("--write-latency and --write-cpu must not be negative")
    os.makedirs(args.dir, exist_ok=True)
    make_certificates(args.dir)

    server = Server(("127.0.0.1", args.port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(args.dir, "server.crt"), os.path.join(args.dir, "server.key"))
    context.load_verify_locations(os.path.join(args.dir, "ca.crt"))
    # As kube-apiserver: a client certificate is asked for, not required; without one (or a
    # token) the request is answered 401.
    context.verify_mode = ssl.CERT_OPTIONAL
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.store = Store(args.history)
    if args.traefik:
        crds = server.store.objects[("apiextensions.k8s.io", "customresourcedefinitions")]
        for crd in traefik_crds():
            server.store.stamp(crd, generation=True)
            server.store.establish(crd)
            crds[("", crd["metadata"]["name"])] = crd
    server.faults = Faults()
    server.token = args.token
    server.bookmark_interval = args.bookmark_interval
    server.garbage_collect = args.gc
    server.store.garbage_collect = args.gc
    server.write_latency = args.write_latency
    server.write_cpu = args.write_cpu
    if args.deployment_controller:
        server.store.deployment_controller = DeploymentController(server.store, ready=not args.pods_never_ready)
        server.store.deployment_controller.start()
    server.verbose = args.verbose
    server.stats, server.stats_by, server.stats_agents, server.stats_lock, server.watches = {}, {}, {}, threading.Lock(), 0
    server.stopping = False
    port = server.server_address[1]
    write_kubeconfigs(args.dir, port, args.token)
    with open(os.path.join(args.dir, "port"), "w") as f:
        f.write(str(port))

    def stop(*_):
        server.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A parent may start us with these blocked (Foundation.Process from a Dispatch thread does):
    # a fake that ignores SIGTERM outlives its test.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    print(f"listening on https://127.0.0.1:{port}", flush=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
