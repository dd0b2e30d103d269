"""The label server's request guard: MONAI Label's FastAPI app behind checks of who asks and for what.

MONAI Label 0.8.5 trusts its clients: an image id or label tag goes into file paths as given, an
absolute path is read as a study, and ``PUT /model/<name>`` replaces the served model. The server of
``monai-liver label-server`` therefore runs ``app`` of this module (an ASGI wrapper around
``monailabel.app:app``; uvicorn imports it after MONAI Label's settings are set), which answers
before MONAI Label sees the request:

- **401** without ``Authorization: Bearer <token>`` when the server has a token
  (``--token-file``; required when it listens on anything but the loopback interface);
- **400** for an ``image``, ``id``, ``label``, ``tag`` or ``model`` value that is not a plain name
  (letters, digits, ``.``, ``_``, ``-``; no path separator, no ``..``, not absolute);
- **404** for an image id that names no study of the datastore (except ``PUT /datastore/image``,
  which adds one), and for the endpoints this app does not use (``/proxy``, ``/session``,
  ``/batch``, ``/infer/wsi``), which read or write outside the studies folder;
- **403** for ``PUT`` / ``DELETE`` on ``/model``: the served model changes only by ``--model`` at
  start or by ``/train/joint`` on the studies' own labels; with ``--allow-model-upload``, ``PUT
  /model/joint`` is let through only with a checkpoint that loads with ``weights_only=True`` into
  the served network (same strategy, backbone, classes, size), else 400.

Written by hand because MONAI Label has no such options (its Keycloak auth is the alternative for
per-user accounts: ``MONAI_LABEL_AUTH_ENABLE`` and its ``MONAI_LABEL_AUTH_*`` settings).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from urllib.parse import parse_qs

__all__ = ["TOKEN_ENV", "UPLOAD_ENV", "SAFE_NAME", "RequestGuard", "check_model_upload", "check_request"]

#: environment variable through which the server hands the token to the guard (same process)
TOKEN_ENV = "MONAI_LIVER_LABEL_TOKEN"
#: set to "1" by ``--allow-model-upload``
UPLOAD_ENV = "MONAI_LIVER_LABEL_MODEL_UPLOAD"
#: a datastore id, label tag or model name: a plain file-name-like word
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID_PARAMS = ("image", "id", "label")
_NAME_PARAMS = ("tag", "model")
_BLOCKED = ("/proxy", "/session", "/batch", "/infer/wsi")


def check_request(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
                  token: str | None, study_ids, allow_model_upload: bool = False) -> tuple[int, str] | None:
    """``(status, reason)`` to answer instead of MONAI Label, or None to let the request through.
    ``study_ids()`` returns the datastore's image ids (called only when an id must exist)."""
    if token:
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return 401, "missing or wrong bearer token (Authorization: Bearer <token>)"
    path = "/" + path.strip("/")
    if path.startswith(_BLOCKED):
        return 404, f"{path}: not served by this app"
    if path.startswith("/model") and method in ("PUT", "POST", "DELETE") and not (allow_model_upload and method == "PUT"):
        return 403, "the served model is replaced only by --model at start or by /train/joint (or --allow-model-upload)"
    segments = [s for s in path.split("/") if s]
    if segments and segments[0] in ("infer", "train") and len(segments) > 1 and not SAFE_NAME.match(segments[1]):
        return 400, f"model name {segments[1]!r} is not a plain name"
    for key in (*_ID_PARAMS, *_NAME_PARAMS):
        for value in query.get(key, []):
            if not SAFE_NAME.match(value) or ".." in value:
                return 400, f"{key} {value!r} is not a plain name (letters, digits, '.', '_', '-')"
    adds_image = method == "PUT" and path in ("/datastore/image", "/datastore")
    ids = [v for key in _ID_PARAMS for v in query.get(key, [])]
    if ids and not adds_image:
        known = set(study_ids())
        for value in ids:
            if value not in known:
                return 404, f"image {value!r} is not a study of this datastore"
    return None


def _study_ids() -> list[str]:
    from monailabel.interfaces.utils.app import app_instance

    return list(app_instance().datastore().list_images())


def check_model_upload(data: bytes, served: str) -> str | None:
    """Why an uploaded checkpoint may not replace ``served`` (None when it may): it must load with
    ``torch.load(weights_only=True)`` and fit the served network exactly (same strategy, backbone,
    classes: :func:`monai_liver.inference.model.load_model`)."""
    import tempfile
    from pathlib import Path

    from monai_liver.errors import LiverError
    from monai_liver.inference.model import load_model
    from monai_liver.model_package import read_settings

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "model.pt"
        f.write_bytes(data)
        try:
            served_settings = read_settings(served) if Path(served).is_file() else {}
            new = load_model(f, Path(served).parents[1], "cpu")
        except LiverError as e:
            return str(e).replace(str(f), "the uploaded file")
        if new.torchscript or new.strategy != "joint":
            return "the uploaded file is not a joint model checkpoint"
        for key in ("backbone", "class_names", "image_size"):
            if served_settings.get(key) and new.settings.get(key) != served_settings[key]:
                return f"the uploaded model's {key} ({new.settings.get(key)}) is not the served one's ({served_settings[key]})"
    return None


def _served_model() -> str:
    from monailabel.interfaces.utils.app import app_instance

    return str(app_instance()._infers["joint"].path[0])


async def _buffered(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class RequestGuard:
    """ASGI wrapper: :func:`check_request` on every HTTP request, then the wrapped app. With
    ``allow_model_upload``, ``PUT /model/joint`` passes only a file that :func:`check_model_upload`
    accepts (the body is read here, checked, and handed on unchanged)."""

    def __init__(self, inner, token: str | None = None, study_ids=_study_ids, allow_model_upload: bool = False,
                 served_model=_served_model) -> None:
        self.inner, self.token, self.study_ids = inner, token or None, study_ids
        self.allow_model_upload, self.served_model = allow_model_upload, served_model

    async def _check_upload(self, scope, receive):
        """(answer or None, a receive that replays the body) for ``PUT /model/...``."""
        from starlette.requests import Request

        body = await _buffered(receive)
        form = await Request(scope, _replay(body)).form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            return (400, "the upload has no 'file' part"), _replay(body)
        reason = check_model_upload(await upload.read(), self.served_model())
        return ((400, reason) if reason else None), _replay(body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        answer = check_request(scope["method"], path, query, headers, self.token, self.study_ids,
                               self.allow_model_upload)
        if answer is None and scope["method"] == "PUT" and path.strip("/").startswith("model"):
            answer, receive = await self._check_upload(scope, receive)
        if answer is None:
            return await self.inner(scope, receive, send)
        status, reason = answer
        body = json.dumps({"detail": reason}).encode()
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})




def __getattr__(name: str):
    """``app``: built on first access (by uvicorn, after MONAI Label's settings are set)."""
    if name == "app":
        from monailabel.app import app as monailabel_app

        guarded = RequestGuard(monailabel_app, os.environ.get(TOKEN_ENV),
                               allow_model_upload=os.environ.get(UPLOAD_ENV) == "1")
        globals()["app"] = guarded
        return guarded
    raise AttributeError(name)
