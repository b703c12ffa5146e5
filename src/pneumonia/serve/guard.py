"""`RequestGuard`: an ASGI middleware in front of LitServe, so that every refusal is one
JSON line with the right status and no request reaches a worker unchecked:

- the API key (`serve.api_key`): every path but `/health` needs the header `X-API-Key`
  (compared in constant time); otherwise 401;
- `POST /predict`: the body is read up to its limit (the declared `Content-Length` is
  checked first, then the bytes as they arrive: 413 past it, without reading the rest);
  a multipart upload (one `file` field, optional `gradcam`) becomes the same JSON a client
  may send itself (`{"image": <base64>, "filename": ..., "gradcam": ...}`); a body that is
  neither is a 400. `?gradcam=true` in the query asks for the Grad-CAM PNG too.

LitServe's own `MaxSizeMiddleware` raises inside the ASGI stack (a 500 and a traceback in
the log), and its API key is read from the environment at import: both are replaced here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from pneumonia.serve.settings import MB, ServeSettings

OPEN_PATHS = ("/health",)  # a load balancer's probe needs no key
FORM_FIELDS = {"file", "gradcam"}


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestGuard:
    def __init__(self, app: Any, settings: ServeSettings, predict_path: str = "/predict") -> None:
        self.app, self.settings, self.predict_path = app, settings, predict_path
        # a base64 JSON body is 4/3 of the file; a multipart body adds its boundaries and headers
        self.max_body = (settings.max_bytes * 4) // 3 + 64 * 1024

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path not in OPEN_PATHS and not self.settings.key_matches(headers.get("x-api-key")):
            await _answer(
                send,
                401,
                "missing or wrong API key: send it in the X-API-Key header",
                [(b"www-authenticate", b"X-API-Key")],
            )
            return
        if path != self.predict_path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(headers, receive)
            payload = await self._payload(scope, headers, body)
        except Refusal as err:
            await _answer(send, err.status, str(err))
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "gradcam" in query and "gradcam" not in payload:
            payload["gradcam"] = query["gradcam"][-1].lower() in ("1", "true", "yes")
        data = json.dumps(payload).encode()
        new_headers = [
            (k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
        ]
        new_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # the disconnect LitServe may wait for
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app({**scope, "headers": new_headers}, replay, send)

    def _too_large(self) -> Refusal:
        return Refusal(
            413,
            f"request body larger than the limit for a file of {self.settings.max_file_mb:g} MB (serve.max_file_mb)",
        )

    async def _read(self, headers: dict[str, str], receive: Callable[[], Awaitable[dict]]) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "the client closed the connection before the body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _payload(self, scope: dict, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await self._form(scope, body)
        if not body:
            raise Refusal(400, 'empty body: send a multipart \'file\' or a JSON object {"image": "<base64>"}')
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise Refusal(
                400,
                "the body is neither JSON nor a multipart upload: send a multipart 'file' "
                '(Content-Type: multipart/form-data) or {"image": "<base64>"}',
            ) from None
        if not isinstance(payload, dict):
            raise Refusal(
                400, 'the JSON body must be an object {"image": "<base64>", "filename": ..., "gradcam": false}'
            )
        return payload

    async def _form(self, scope: dict, body: bytes) -> dict[str, Any]:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, replay).form(max_files=1, max_fields=4)
        except Exception as err:  # starlette/python-multipart: a malformed body, too many parts
            raise Refusal(400, f"malformed multipart body ({str(err).strip()[:200] or type(err).__name__})") from None
        try:
            unknown = sorted(set(form.keys()) - FORM_FIELDS)
            if unknown:
                raise Refusal(400, f"unknown form field(s) {unknown}: the upload takes 'file' (and 'gradcam')")
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Refusal(400, "the multipart upload needs a 'file' field holding the image or DICOM file")
            data = await upload.read()
            if len(data) > self.settings.max_bytes:
                raise Refusal(
                    413,
                    f"file of {len(data) / MB:.1f} MB: larger than the limit of "
                    f"{self.settings.max_file_mb:g} MB (serve.max_file_mb)",
                )
            payload: dict[str, Any] = {
                "image": base64.b64encode(data).decode("ascii"),
                "filename": upload.filename or "upload",
            }
            if "gradcam" in form:
                payload["gradcam"] = str(form["gradcam"]).lower() in ("1", "true", "yes")
            return payload
        finally:
            await form.close()


async def _answer(send: Callable, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})
