"""MONAI Label's auth made to accept valid tokens: its token check names no signing algorithm, which PyJWT 2 requires.

MONAI Label 0.8.5 (``monailabel/endpoints/user/auth.py``, ``from_token``) checks a bearer token with
``jwt.decode(token, public_key, options=...)`` and no ``algorithms``; PyJWT >= 2.0 (monailabel requires >= 2.8)
then raises ``DecodeError('It is required that you pass in a value for the "algorithms" argument ...')`` for every
token, which MONAI Label answers with 401: with ``MONAI_LABEL_AUTH_ENABLE=true`` no request gets through, valid token
or not. ``install()`` gives that module a ``jwt`` whose ``decode`` passes ``algorithms=["RS256"]`` (the algorithm of
a Keycloak realm's default key, the ``public_key`` MONAI Label fetches); everything else (the key from the realm,
expiry, roles) stays MONAI Label's. Nothing changes once a MONAI Label release passes ``algorithms`` itself.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256",)


class _DecodeWithAlgorithms:
    """PyJWT, with ``decode`` defaulting to ``ALGORITHMS`` (pinned: a token cannot choose its own algorithm)."""

    def __init__(self, jwt_module) -> None:
        self._jwt = jwt_module

    def __getattr__(self, name: str):
        return getattr(self._jwt, name)

    def decode(self, token, key, *args, **kwargs):
        kwargs.setdefault("algorithms", list(ALGORITHMS))
        return self._jwt.decode(token, key, *args, **kwargs)


def install() -> bool:
    """Give MONAI Label's token check its algorithms; False when it needs none (already done, or fixed upstream)."""
    from monailabel.endpoints.user import auth

    if isinstance(auth.jwt, _DecodeWithAlgorithms) or "algorithms" in inspect.getsource(auth.from_token):
        return False
    auth.jwt = _DecodeWithAlgorithms(auth.jwt)
    logger.info(f"MONAI Label auth: bearer tokens are checked with algorithms {list(ALGORITHMS)}")
    return True
