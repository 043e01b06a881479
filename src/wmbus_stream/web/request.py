"""Requests, responses and form/multipart parsing for the web server (no framework).

Everything here works on bytes that are already read and bounded: the server reads a body
only after the route, the authentication and the same-origin check have passed and only up
to the route's size limit. Parsing is strict: anything malformed is a ``BadRequest``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote

from ..errors import WmbusStreamError
from .auth import Session

__all__ = ["BadRequest", "Part", "Request", "Response", "json_response", "error_response", "redirect"]

MAX_PARTS = 8
MAX_FIELDS = 200


class BadRequest(WmbusStreamError, ValueError):
    """The request is malformed; answered 400 with the reason."""


MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number")


def _check_text(value: Any) -> None:
    """Refuse strings that are not text (an escaped lone surrogate such as ``\\ud800``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"the JSON body holds \\u{ord(value[exc.start]):04x}, which is not a character "
                             "(a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


@dataclass(frozen=True, slots=True)
class Part:
    """One field of a multipart form: its name, file name (if a file) and bytes."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def _header_params(value: str) -> Message:
    msg = Message()
    msg["content-type"] = value
    return msg


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """``multipart/form-data`` fields by name; BadRequest for anything malformed."""
    boundary = _header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise BadRequest("multipart body without a valid boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        raise BadRequest("multipart body does not start with its boundary")
    end = body.find(b"\r\n" + delimiter + b"--")
    if end < 0:
        raise BadRequest("multipart body is not terminated")
    chunks = body[len(delimiter) + 2:end].split(b"\r\n" + delimiter + b"\r\n")
    if len(chunks) > MAX_PARTS:
        raise BadRequest(f"at most {MAX_PARTS} form fields are accepted")
    parts: dict[str, Part] = {}
    for chunk in chunks:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("multipart part without a header section")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or len(line) > 1024:
                raise BadRequest("malformed multipart part header")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
        disposition = headers.get("content-disposition", "")
        params = _header_params("form-data; " + disposition.partition(";")[2])
        if not disposition.lower().startswith("form-data"):
            raise BadRequest("multipart part is not form-data")
        field_name = params.get_param("name")
        filename = params.get_param("filename")
        if not isinstance(field_name, str) or not field_name:
            raise BadRequest("multipart part without a name")
        if field_name in parts:
            raise BadRequest(f"field {field_name!r} given twice")
        parts[field_name] = Part(field_name, filename if isinstance(filename, str) else None,
                                 headers.get("content-type", "text/plain"), data)
    return parts


@dataclass(slots=True)
class Request:
    """One HTTP request as the routes see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Any  # http.client.HTTPMessage
    client: str
    tls: bool
    body: bytes = b""
    session: Session | None = None
    user: str | None = None
    via: str | None = None  # "session" or "basic"
    _form: dict[str, str] | None = None
    _parts: dict[str, Part] | None = None

    @property
    def is_api(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    def form(self) -> dict[str, str]:
        """Fields of an urlencoded or multipart form (text fields only)."""
        if self._form is None:
            if self.content_type == "multipart/form-data":
                self._form = {p.name: p.data.decode("utf-8", "replace")
                              for p in self.parts().values() if p.filename is None}
            elif self.content_type in ("application/x-www-form-urlencoded", ""):
                try:
                    pairs = parse_qsl(self.body.decode("utf-8"), keep_blank_values=True,
                                      strict_parsing=False, max_num_fields=MAX_FIELDS)
                except (UnicodeDecodeError, ValueError) as exc:
                    raise BadRequest(f"malformed form: {exc}") from None
                self._form = {}
                for name, value in pairs:
                    if name in self._form:
                        raise BadRequest(f"field {name!r} given twice")
                    self._form[name] = value
            else:
                self._form = {}
        return self._form

    def parts(self) -> dict[str, Part]:
        if self._parts is None:
            self._parts = (parse_multipart(self.body, self.headers.get("Content-Type") or "")
                           if self.content_type == "multipart/form-data" else {})
        return self._parts

    def json(self) -> Any:
        """The body as JSON: UTF-8, nested at most ``MAX_JSON_DEPTH`` deep, no lone surrogates or NaN."""
        if self.content_type != "application/json":
            raise BadRequest("send the body as application/json")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body is not UTF-8 (byte 0x{self.body[exc.start]:02x} at offset {exc.start})") from None
        depth = 0
        for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
            depth += 1 if bracket in "[{" else -1
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        _check_text(value)
        return value


@dataclass(slots=True)
class Response:
    """What a route answers: status, body bytes, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_response(value: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return Response(status, body, "application/json", headers or [])


def error_response(status: int, error: str, reason: str, *, key: str | None = None,
                   problems: list[dict[str, str]] | None = None,
                   headers: list[tuple[str, str]] | None = None) -> Response:
    """The JSON error shape of the API: ``{"error", "reason", "key"[, "problems"]}``."""
    value: dict[str, Any] = {"error": error, "reason": reason, "key": key}
    if problems is not None:
        value["problems"] = problems
    return json_response(value, status, headers)


def redirect(location: str) -> Response:
    return Response(303, b"", "text/plain", [("Location", quote(location, safe="/?=&;%:+,.-_~"))])
