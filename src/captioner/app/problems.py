"""Errors in one shape for the service and the CLI: RFC 9457 problem details.

A problem is ``{"type", "title", "status", "detail"}``: `type` is ``urn:captioner:problem:<kind>``
(a stable identifier a client can branch on), `title` the kind's one-line summary, `status` the
HTTP status (the CLI reports the status the service would give the same problem), `detail` what
was wrong with this request or file. The service sends them as ``application/problem+json``; the
CLI's ``--json`` mode writes them as JSON lines on stderr (with ``"image"``), away from results.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = ["MEDIA_TYPE", "PROBLEMS", "TYPE_PREFIX", "problem"]

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:captioner:problem:"

# kind -> (HTTP status, title)
PROBLEMS: dict[str, tuple[int, str]] = {
    "empty": (400, "Empty upload"),
    "bad_form": (400, "Malformed multipart form"),
    "no_image": (422, "No image in the request"),
    "bad_request": (422, "Invalid request parameters"),
    "too_large": (413, "Upload too large"),
    "too_many_pixels": (413, "Image has too many pixels"),
    "too_many_images": (413, "Too many images in one request"),
    "not_an_image": (415, "Not an image"),
    "undecodable": (422, "Image cannot be decoded"),
    "unauthorized": (401, "Missing or unknown API key"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "disconnected": (499, "Client closed the request"),
    "busy": (503, "Service busy"),
    "not_ready": (503, "Model not ready"),
    "internal": (500, "Internal error"),
    # the CLI's own
    "no_match": (404, "No such file or pattern"),
    "no_images": (400, "Nothing to caption"),
    "bad_model": (500, "Model folder unusable"),
    "write_failed": (500, "Output not written"),
}


def problem(kind: str, detail: str, status: int | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object of `kind` (a key of PROBLEMS; another gets its status's phrase as title)."""
    known = PROBLEMS.get(kind)
    code = status if status is not None else (known[0] if known else 500)
    title = known[1] if known else _phrase(code)
    return {"type": TYPE_PREFIX + kind, "title": title, "status": code, "detail": detail, **extra}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
