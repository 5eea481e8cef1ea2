"""Who may call the API (docs/wire-format.md §9.6): with ``API_TOKEN`` set, every call needs one of
the credentials cvat-sdk and cvat-cli send, all standing for the one user this server has:

- ``Authorization: Bearer <API_TOKEN>`` or ``Token <API_TOKEN>`` (an access token: ``Client.login``
  with ``AccessTokenCredentials``, ``CVAT_ACCESS_TOKEN`` for cvat-cli), or ``Token <key>`` with the
  ``key`` login answers (CVAT's login key, which its model caps at 40 characters: an HMAC of
  ``API_TOKEN``, good as long as the token is);
- ``Authorization: Basic base64(<any user>:<API_TOKEN>)``;
- CVAT's session: ``POST /api/auth/login`` with ``{username, password: API_TOKEN}`` sets the cookies
  ``sessionid`` and ``csrftoken``; calls send both cookies, and every unsafe method (not GET, HEAD,
  OPTIONS, TRACE) also ``X-CSRFToken`` equal to the ``csrftoken`` cookie, else 403 with Django's
  words, as CVAT answers.

Sessions are kept nowhere: ``sessionid`` is ``<issued>.<nonce>.<HMAC>`` under a key derived from
``API_TOKEN``, so any API replica with the same token verifies it, it expires ``SESSION_SECONDS``
after login, and changing ``API_TOKEN`` ends every session. ``csrftoken`` is an HMAC of the session,
so neither cookie can be made without the token. Logout clears the cookies; a copied ``sessionid``
stays valid until it expires (or the token changes).

Without ``API_TOKEN`` nothing is checked, as before; login then accepts anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import time

from fastapi import Request

from dispatcher.errors import Forbidden, Unauthorized

SESSION_SECONDS = 14 * 24 * 3600  # Django's SESSION_COOKIE_AGE, which CVAT keeps
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")  # Django's: no CSRF token needed
TOKEN_SCHEMES = ("bearer", "token")  # Token: cvat-sdk's and cvat-cli's older scheme
CLOCK_SKEW = 60  # seconds a session may seem to come from the future (replicas' clocks differ)


def _key(api_token: str | None) -> bytes:
    return hmac.new((api_token or "").encode(), b"dispatcher session v1", hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def login_key(api_token: str | None) -> str:
    """The ``key`` login answers: 40 hex digits, like CVAT's, that stand for the token."""
    return hmac.new(_key(api_token), b"login key", hashlib.sha256).hexdigest()[:40]


def new_session(api_token: str | None, now: float | None = None) -> tuple[str, str]:
    """A fresh ``(sessionid, csrftoken)`` pair."""
    key = _key(api_token)
    body = f"{int(time.time() if now is None else now)}.{secrets.token_urlsafe(12)}"
    session = f"{body}.{_mac(key, 's:' + body)}"
    return session, csrf_token(api_token, session)


def csrf_token(api_token: str | None, session: str) -> str:
    return _mac(_key(api_token), "c:" + session)


def session_valid(api_token: str | None, session: str, now: float | None = None) -> bool:
    body, _, mac = session.rpartition(".")
    issued, _, _nonce = body.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac.encode(), _mac(_key(api_token), "s:" + body).encode()):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return -CLOCK_SKEW <= age < SESSION_SECONDS


def equal(given: str, expected: str) -> bool:
    """Compared in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def check(request: Request, api_token: str | None) -> None:
    """Unauthorized (401) without valid credentials, Forbidden (403) for a session call of an
    unsafe method without the matching ``X-CSRFToken``; nothing at all without ``api_token``."""
    if api_token is None:
        return
    header = request.headers.get("authorization")
    if header is not None:  # a header is decisive, whatever cookies come with it
        scheme, _, credentials = header.strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme in TOKEN_SCHEMES and (equal(credentials, api_token) or equal(credentials, login_key(api_token))):
            return
        if scheme == "basic" and equal(_basic_password(credentials), api_token):
            return
        raise Unauthorized()
    session = request.cookies.get("sessionid")
    if session is None:
        raise Unauthorized()
    if not session_valid(api_token, session):
        raise Unauthorized("the session has expired or is not this server's: log in again (POST /api/auth/login)")
    check_csrf(request, lambda cookie: equal(cookie, csrf_token(api_token, session)))


def check_csrf(request: Request, cookie_valid=lambda cookie: True) -> None:
    """Django's CSRF check for a call authenticated by its session cookie, with Django's words (CVAT
    answers them as ``{"detail": "CSRF Failed: ..."}``): an unsafe method must send ``X-CSRFToken``
    matching the ``csrftoken`` cookie, itself or masked as Django masks it; ``cookie_valid`` says
    whether the cookie is one this server issued."""
    if request.method in SAFE_METHODS:
        return
    cookie, sent = request.cookies.get("csrftoken"), request.headers.get("x-csrftoken")
    if cookie is None:
        raise Forbidden("CSRF Failed: CSRF cookie not set.")
    if sent is None:
        raise Forbidden("CSRF Failed: CSRF token missing.")
    if not (equal(django_csrf_secret(sent), django_csrf_secret(cookie)) and cookie_valid(cookie)):
        raise Forbidden("CSRF Failed: CSRF token incorrect.")


CSRF_CHARS = string.ascii_letters + string.digits


def django_csrf_secret(token: str) -> str:
    """Django masks its 32-character CSRF secret in forms and headers as 64 characters: a random mask,
    then the secret shifted by it, character by character, in ``CSRF_CHARS``."""
    if len(token) != 64 or any(c not in CSRF_CHARS for c in token):
        return token
    mask, shifted = token[:32], token[32:]
    return "".join(CSRF_CHARS[(CSRF_CHARS.index(c) - CSRF_CHARS.index(m)) % len(CSRF_CHARS)]
                   for c, m in zip(shifted, mask))


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]
