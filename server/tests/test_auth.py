"""MONAI Label's own auth, on, against a stand-in identity provider on 127.0.0.1: only a valid token with the role
gets through.

The provider answers what MONAI Label 0.8.5 asks a Keycloak realm for (``monailabel/endpoints/user/auth.py``):
``GET <realm>`` for the realm's ``public_key`` (base64 DER; MONAI Label wraps it in PEM and caches it for the life of
the process), ``GET <realm>/.well-known/openid-configuration`` for the ``token_endpoint``, and that endpoint's
password grant (what ``POST /auth/token`` passes on). Its RSA key is made here; tokens are signed here with
``cryptography`` (in both venvs), RS256 as Keycloak signs them, so no JWT library of the server's checks itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote_plus

import numpy as np
import pytest
from conftest import SERVER, server_python
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from test_server import SLICER_CLIENT, Local, inside_voxel, multipart_parts, nifti_array, slicer_body

REALM = "napari-msa"
USER_ROLE = "monailabel-user"  # what /info/ and /infer/ require (MONAI_LABEL_AUTH_ROLE_USER's default)
PASSWORD = "correct horse"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_token(key: rsa.RSAPrivateKey, roles: list[str], expires_in: float = 600, username: str = "ann") -> str:
    """An access token shaped like a Keycloak realm's: RS256, roles under ``realm_access.roles``."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "test-key"}
    claims = {"exp": int(now + expires_in), "iat": now, "iss": "stand-in", "preferred_username": username,
              "email": f"{username}@example.org", "name": username.title(), "realm_access": {"roles": roles}}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


class IdentityProvider:
    """A Keycloak realm's three answers MONAI Label uses, served from a thread; every request is recorded."""

    def __init__(self) -> None:
        self.key = rsa_key()
        self.requests: list[tuple[str, str]] = []
        self.grants: list[dict[str, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm_uri = f"http://127.0.0.1:{self.httpd.server_address[1]}/realms/{REALM}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def public_key_b64(self) -> str:
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def _handler(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                idp.requests.append(("GET", self.path))
                base = f"/realms/{REALM}"
                if self.path == base:
                    self._send(200, {"realm": REALM, "public_key": idp.public_key_b64(),
                                     "token-service": f"{idp.realm_uri}/protocol/openid-connect"})
                elif self.path == f"{base}/.well-known/openid-configuration":
                    self._send(200, {"issuer": idp.realm_uri,
                                     "token_endpoint": f"{idp.realm_uri}/protocol/openid-connect/token"})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                idp.requests.append(("POST", self.path))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                        .items()}
                idp.grants.append(form)
                if self.path != f"/realms/{REALM}/protocol/openid-connect/token":
                    self._send(404, {"error": "not found"})
                elif form.get("grant_type") != "password" or form.get("password") != PASSWORD:
                    self._send(401, {"error": "invalid_grant"})
                else:
                    token = signed_token(idp.key, [USER_ROLE], username=form.get("username", ""))
                    self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 600})

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.thread.start()
    try:
        yield provider
    finally:
        provider.httpd.shutdown()
        provider.httpd.server_close()


def auth_env(idp: IdentityProvider) -> dict[str, str]:
    """MONAI Label's settings for auth against the provider (NO_PROXY: its key is fetched with requests)."""
    return {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": idp.realm_uri,
            "MONAI_LABEL_AUTH_TIMEOUT": "10", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


@pytest.fixture(scope="module")
def auth_server(start_server, idp):
    with start_server(env=auth_env(idp), ready_path="/auth/") as srv:
        yield srv


def send(server, method: str, selector: str, token: str | None = None, fields: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request as the Slicer extension makes it (its multipart for ``fields``), with ``Authorization: Bearer``."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None
    if fields is not None:
        content_type, body = slicer_body(fields, {})
        headers.update({"content-type": content_type, "content-length": str(len(body))})
    conn = server.connection()
    conn.request(method, selector, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def click_request(studies: Path) -> tuple[str, dict]:
    i, j, k = inside_voxel(studies, "phantom_ct", 1)  # the liver
    params = {"label": "liver", "foreground": [[i, j, k]], "background": [], "slice": k, "client_id": SLICER_CLIENT}
    return f"/infer/msa_2d?image={quote_plus('phantom_ct')}", {"params": json.dumps(params)}


def test_auth_is_on_and_names_the_realm(auth_server, idp):
    status, _, body = send(auth_server, "GET", "/auth/")  # open: clients ask it before logging in
    assert status == 200
    assert json.loads(body) == {"enabled": True, "client_id": "monailabel-app", "realm": idp.realm_uri}


def test_no_token_is_401(auth_server, studies):
    selector, fields = click_request(studies)
    for method, where, form in (("GET", "/info/", None), ("POST", selector, fields)):
        status, headers, body = send(auth_server, method, where, fields=form)
        assert status == 401, body
        assert headers.get("www-authenticate") == "Bearer"
    status, _, _ = send(auth_server, "GET", "/info/", headers={"Authorization": "Basic YW5uOnB3"})  # not a bearer
    assert status == 401


@pytest.mark.parametrize("which", ["not a jwt", "another key", "expired", "unsigned", "hs256 with the public key"])
def test_a_token_that_is_not_the_realms_is_401(auth_server, idp, studies, which):
    if which == "not a jwt":
        token = "abc.def.ghi"
    elif which == "another key":
        token = signed_token(rsa_key(), [USER_ROLE])
    elif which == "expired":
        token = signed_token(idp.key, [USER_ROLE], expires_in=-60)
    elif which == "unsigned":  # alg none: the token choosing to skip the check
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        claims = b64url(json.dumps({"exp": int(time.time()) + 600, "realm_access": {"roles": [USER_ROLE]}}).encode())
        token = f"{header}.{claims}."
    else:  # the classic confusion: the realm's public key used as an HMAC secret
        pem = f"-----BEGIN PUBLIC KEY-----\n{idp.public_key_b64()}\n-----END PUBLIC KEY-----"
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = b64url(json.dumps({"exp": int(time.time()) + 600, "realm_access": {"roles": [USER_ROLE]}}).encode())
        mac = hmac.new(pem.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
        token = f"{header}.{claims}.{b64url(mac)}"
    selector, fields = click_request(studies)
    assert send(auth_server, "GET", "/info/", token)[0] == 401
    assert send(auth_server, "POST", selector, token, fields)[0] == 401


def test_a_valid_token_without_the_role_is_403(auth_server, idp):
    status, _, body = send(auth_server, "GET", "/info/", signed_token(idp.key, ["offline_access"]))
    assert status == 403 and USER_ROLE in json.loads(body)["detail"]


def test_a_valid_token_with_the_role_gets_info_and_the_sessions_mask(auth_server, idp, studies, local_model):
    token = signed_token(idp.key, [USER_ROLE])
    status, _, body = send(auth_server, "GET", "/info/", token)
    assert status == 200 and {"msa_2d", "msa_3d"} <= set(json.loads(body)["models"])
    selector, fields = click_request(studies)
    status, headers, body = send(auth_server, "POST", selector, token, fields)
    assert status == 200, body[:2000]
    label = nifti_array(multipart_parts(headers["content-type"], body)["image"])
    local = Local(studies / "phantom_ct.nii.gz", local_model)
    i, j, k = inside_voxel(studies, "phantom_ct", 1)
    mask, z = local.predict([(i, j, k, 1)])
    assert mask.any() and np.array_equal(label, local.to_source({z: mask}))  # auth changes nothing in the answer
    assert idp.requests.count(("GET", f"/realms/{REALM}")) == 1  # the key is fetched once, then cached


def test_a_password_login_through_monailabel_gives_a_token_that_works(auth_server, idp):
    """``POST /auth/token`` (form username/password) is passed to the realm's token endpoint as a password grant."""
    form = "username=ann&password=" + quote_plus(PASSWORD)
    headers = {"content-type": "application/x-www-form-urlencoded", "content-length": str(len(form))}
    conn = auth_server.connection()
    conn.request("POST", "/auth/token", body=form, headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert idp.grants[-1] == {"client_id": "monailabel-app", "username": "ann", "password": PASSWORD,
                              "grant_type": "password"}
    status, _, body = send(auth_server, "GET", "/auth/token/valid", answer["access_token"])
    assert status == 200 and json.loads(body)["username"] == "ann"
    assert send(auth_server, "GET", "/info/", answer["access_token"])[0] == 200


def test_monailabel_alone_refuses_even_a_valid_token_and_the_apps_fix_accepts_it(idp):
    """Why ``msa_app/auth.py`` exists: MONAI Label 0.8.5's ``from_token`` with PyJWT 2 raises for every token.
    Once a release passes ``algorithms`` itself this fails, and the fix (which then does nothing) can go."""
    script = (
        "import json, sys\n"
        "from monailabel.endpoints.user import auth\n"
        "import jwt\n"
        "try:\n"
        "    auth.from_token(sys.argv[1])\n"
        "    before = 'accepted'\n"
        "except jwt.InvalidTokenError as err:\n"
        "    before = str(err)\n"
        "from msa_app import auth as fix\n"
        "installed = fix.install()\n"
        "user = auth.from_token(sys.argv[1])\n"
        "print(json.dumps({'before': before, 'installed': installed, 'roles': user.roles, 'name': user.username}))\n")
    env = dict(os.environ, **auth_env(idp), PYTHONPATH=str(SERVER))
    done = subprocess.run([str(server_python()), "-c", script, signed_token(idp.key, [USER_ROLE])], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert 'pass in a value for the "algorithms" argument' in result["before"]
    assert result == dict(result, installed=True, roles=[USER_ROLE], name="ann")


def test_roles_are_per_endpoint_and_not_nested(auth_server, idp):
    """MONAI Label's defaults: clicking needs ``monailabel-user``, submitting a label ``monailabel-annotator``,
    starting training ``monailabel-admin``; a role does not include another, so a realm gives each user all it needs."""
    user = signed_token(idp.key, [USER_ROLE])
    admin_only = signed_token(idp.key, ["monailabel-admin"])
    assert send(auth_server, "GET", "/info/", admin_only)[0] == 403
    train = ("POST", "/train/msa_tune?run_sync=false", {"headers": {"content-type": "application/json"}})
    save = ("PUT", "/datastore/label?image=phantom_ct&tag=final", {"fields": {"params": "{}"}})
    for method, selector, extra in (train, save):
        status, _, body = send(auth_server, method, selector, user, **extra)
        assert status == 403, (selector, body)
    status, _, body = send(auth_server, "PUT", "/datastore/label?image=phantom_ct&tag=final",
                           signed_token(idp.key, [USER_ROLE, "monailabel-annotator"]), fields={"params": "{}"})
    assert status == 422, body  # past the role check: the label file is missing


def test_the_napari_client_sends_its_token_and_without_one_is_told_what_to_do(auth_server, idp, studies, local_model):
    """The Segment widget's client (napari_msa.remote): the Token field's token as a Bearer header on every request
    (upload, clicks); without it one clear message."""
    from napari_msa import Session
    from napari_msa.medical_io.cli import read_array
    from napari_msa.remote import ServerError, connect

    with pytest.raises(ServerError, match=r"refused the request \(401\): it needs a valid token in the Token field"):
        connect(auth_server.url)
    remote = connect(auth_server.url, token=signed_token(idp.key, [USER_ROLE])).new_session()
    data, _ = read_array(studies / "phantom_ct.nii.gz")
    remote.set_image(data)  # PUT /session/ with the token
    i, j, k = inside_voxel(studies, "phantom_ct", 1)
    got, _ = remote.predict(points=[(k, j, i)], labels=[1])
    local = Session(local_model)
    local.set_image(data)
    want, _ = local.predict(points=[(k, j, i)], labels=[1])
    assert want.any() and np.array_equal(got, want)
    remote.close()
