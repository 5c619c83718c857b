"""A MONAI Label server over HTTP, as napari-msa's client speaks to it: info, sessions, infer with an uploaded label.

The standard library only (``http.client``), so the napari plugin needs no monailabel package: requests are the
ones MONAI Label's own client and 3D Slicer's extension make (multipart forms, ``Authorization: Bearer <token>``
when a token is given). Every failure is a ``ServerError`` whose message names the server and says what to do:
a server that is gone, one that does not answer in time, a refused token, a request the app refused (its own
one-line reason).
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

INFO_TIMEOUT_S = 10.0  # /info/ answers at once on a live server
SESSION_EXPIRY_S = 24 * 3600  # asked for; MONAI Label caps it at its MONAI_LABEL_SESSION_EXPIRY


class ServerError(RuntimeError):
    """A request to the server failed; the message says why and what to do. ``status``: the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[str, bytes]:
    """A multipart/form-data body: fields, then files (read whole: images of one study)."""
    boundary = f"napari-msa-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts += [f"--{boundary}".encode(), f'Content-Disposition: form-data; name="{name}"'.encode(), b"",
                  value.encode()]
    for name, path in files.items():
        parts += [f"--{boundary}".encode(),
                  f'Content-Disposition: form-data; name="{name}"; filename="{Path(path).name}"'.encode(),
                  b"Content-Type: application/octet-stream", b"", Path(path).read_bytes()]
    parts += [f"--{boundary}--".encode(), b""]
    return f"multipart/form-data; boundary={boundary}", b"\r\n".join(parts)


def multipart_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """The named parts of a multipart reply (infer's label file and its params)."""
    msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP)
    if not msg.is_multipart():
        raise ServerError(f"the server's answer is not multipart ({content_type}); is it a MONAI Label server?")
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.iter_parts()}


class LabelServer:
    """One MONAI Label server: its URL (http or https, with an optional path prefix) and an optional token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0) -> None:
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"'{url}' is not a server address; write it like http://127.0.0.1:8000")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as err:
            raise ServerError(f"'{url}' has a bad port ({err}); write it like http://127.0.0.1:8000") from err
        self.url = url.rstrip("/")
        self.token = (token or "").strip() or None
        self.timeout = timeout
        self._parts = parts

    # --- requests --------------------------------------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return kind(self._parts.hostname, self._parts.port, timeout=timeout)

    def request(self, method: str, path: str, *, query: dict | None = None, fields: dict[str, str] | None = None,
                files: dict[str, Path] | None = None, timeout: float | None = None) -> Reply:
        """One request on its own connection; a failure is a ServerError that says what to do."""
        selector = self._parts.path + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "*/*"}
        body = None
        if fields is not None or files:
            content_type, body = _multipart(fields or {}, files or {})
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = self.timeout if timeout is None else timeout
        conn = self._connection(timeout)
        try:
            conn.request(method, selector, body=body, headers=headers)
            response = conn.getresponse()
            reply = Reply(response.status, response.getheader("content-type", ""), response.read())
        except TimeoutError as err:
            raise ServerError(f"The server {self.url} did not answer within {timeout:g} s; it may be busy (a 3D "
                              "request or training) or stuck: try again, or check it.") from err
        except ConnectionRefusedError as err:
            raise ServerError(f"Cannot reach the server {self.url} (connection refused): is it running? Start it "
                              "(`make server`) or check the Server field.") from err
        except (OSError, http.client.HTTPException) as err:
            raise ServerError(f"Cannot talk to the server {self.url} ({err.__class__.__name__}: {err}); check the "
                              "address and that it is running.") from err
        finally:
            conn.close()
        if reply.status in (401, 403):
            what = "a valid token" if self.token is None else "another token (this one was refused)"
            raise ServerError(f"The server {self.url} refused the request ({reply.status}): it needs {what} in the "
                              "Token field (MONAI Label's auth is on).", reply.status)
        if reply.status >= 400:
            raise ServerError(f"The server {self.url} answered {reply.status}: {self._detail(reply)}", reply.status)
        return reply

    @staticmethod
    def _detail(reply: Reply) -> str:
        try:
            detail = reply.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        text = detail if isinstance(detail, str) else reply.body[:300].decode(errors="replace").strip()
        return text or "(no reason given)"

    # --- MONAI Label's endpoints ------------------------------------------------------------------------------------
    def info(self) -> dict:
        return self.request("GET", "/info/", timeout=min(self.timeout, INFO_TIMEOUT_S)).json()

    def create_session(self, image: Path) -> str:
        """Upload one image file as a MONAI Label session; its id names the image in later requests."""
        reply = self.request("PUT", "/session/", query={"expiry": SESSION_EXPIRY_S}, files={"files": image})
        try:
            return str(reply.json()["session_id"])
        except (ValueError, KeyError) as err:
            raise ServerError(f"The server {self.url} did not return a session id ({reply.body[:200]!r})") from err

    def session_exists(self, session_id: str) -> bool:
        try:
            self.request("GET", f"/session/{quote(session_id)}", timeout=min(self.timeout, INFO_TIMEOUT_S))
        except ServerError as err:
            if err.status == 404:
                return False
            raise
        return True

    def remove_session(self, session_id: str) -> None:
        self.request("DELETE", f"/session/{quote(session_id)}", timeout=min(self.timeout, INFO_TIMEOUT_S))

    def infer(self, task: str, session_id: str, params: dict, label: Path | None = None,
              timeout: float | None = None) -> tuple[dict, bytes]:
        """POST /infer/<task> on the session's image: the result's params and its label file's bytes."""
        return self._infer(task, {"session_id": session_id}, params, label, timeout)

    def infer_image(self, task: str, image: str, params: dict, label: Path | None = None,
                    timeout: float | None = None) -> tuple[dict, bytes]:
        """POST /infer/<task> on a study of the server's datastore (its image id), as 3D Slicer asks."""
        return self._infer(task, {"image": image}, params, label, timeout)

    def _infer(self, task: str, query: dict, params: dict, label: Path | None, timeout: float | None
               ) -> tuple[dict, bytes]:
        reply = self.request("POST", f"/infer/{quote(task)}", query=query, fields={"params": json.dumps(params)},
                             files={"label": label} if label else None, timeout=timeout)
        parts = multipart_parts(reply.content_type, reply.body)
        if "params" not in parts or "image" not in parts:
            raise ServerError(f"The server {self.url} answered {task} without a label file ({sorted(parts)})")
        return json.loads(parts["params"]), parts["image"]
