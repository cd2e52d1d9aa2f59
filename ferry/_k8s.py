"""Kubernetes naming and quantity rules, and where a TrainJob keeps its pod templates, as small
pure functions.

Kept free of the ``kubernetes`` package on purpose: importing ``kubernetes.utils`` pulls in
the whole generated client (~0.35 s), and these rules are a handful of regular expressions
taken from the API server's validation (apimachinery ``validation.go``) and the CRD schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_VAR_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# The quantity grammar exactly as the CRDs' resources schema states it.
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def dns1035_problem(value: str, max_len: int = 63) -> str | None:
    """Why ``value`` is not a DNS-1035 label (what Kubernetes requires of Service and job
    names), or None when it is one."""
    if len(value) > max_len:
        return f"must be at most {max_len} characters (got {len(value)})"
    if not DNS1035_LABEL.match(value):
        return (
            "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a "
            "letter and ending with a letter or digit"
        )
    return None


def dns1123_problem(value: str, *, subdomain: bool = False) -> str | None:
    max_len = 253 if subdomain else 63
    pattern = DNS1123_SUBDOMAIN if subdomain else DNS1123_LABEL
    if len(value) > max_len:
        return f"must be at most {max_len} characters (got {len(value)})"
    if not pattern.match(value):
        kind = "DNS-1123 subdomain" if subdomain else "DNS-1123 label"
        return f"must be a {kind}: lowercase letters, digits{' and .' if subdomain else ''} and '-'"
    return None


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns1123_problem(prefix, subdomain=True):
        return f"label key prefix {prefix!r} must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            f"label key {key!r} must be an optional DNS prefix and '/', then a name of at most "
            "63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (
            f"label value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending alphanumeric (or empty)"
        )
    return None


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity as a Decimal; raises ValueError with the reason."""
    text = str(value)
    if not QUANTITY.match(text):
        raise ValueError(
            f"{text!r} is not a Kubernetes quantity; write a number with an optional suffix "
            "and no spaces, e.g. '500m', '2', '4Gi', '512Mi'"
        )
    match = re.match(r"^([+-]?[0-9.]+)(.*)$", text)
    assert match  # the grammar above guarantees it
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * Decimal(_SUFFIX[suffix])
    except (InvalidOperation, KeyError) as exc:  # pragma: no cover - grammar guards this
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from exc


def runtime_pod_templates(manifest: dict[str, Any]) -> Iterator[tuple[list[Any], str | None, dict[str, Any]]]:
    """Every pod template a TrainJob's ``runtimePatches`` carry, as (its path in the manifest, the
    replicated job's name, the template); parts that are missing or malformed are passed over."""
    for i, patch in enumerate((manifest.get("spec") or {}).get("runtimePatches") or []):
        jobs = (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")
        for j, job in enumerate(jobs or []):
            template = ((job.get("template") or {}).get("spec") or {}).get("template")
            if isinstance(template, dict):
                yield (["spec", "runtimePatches", i, "trainingRuntimeSpec", "template", "spec", "replicatedJobs", j,
                        "template", "spec", "template"], job.get("name"), template)
