"""``/api/auth/login`` and ``/api/auth/logout``: CVAT's session login, as cvat-sdk's
``Client.login((user, password))`` and cvat-cli's ``--auth USER[:PASS]`` use it. The password is
``API_TOKEN`` (any username: this server has one user); the session is ``dispatcher.authentication``'s
(docs/wire-format.md §3.9.7). Both need no credentials, as in CVAT."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from dispatcher import authentication
from dispatcher.dependencies import Services
from dispatcher.errors import BadRequest
from dispatcher.schemas import error_responses

router = APIRouter(tags=["auth"], responses=error_responses(400, 413))
CSRF_COOKIE_SECONDS = 365 * 24 * 3600  # Django's CSRF_COOKIE_AGE; the token is only good with its session


@router.post("/api/auth/login")
def login(body: Annotated[dict, Body()], request: Request, response: Response, services: Services) -> dict:
    """``{username or email, password}`` -> ``{key}`` and the cookies ``sessionid`` and
    ``csrftoken``. ``key`` is CVAT's login key: ``Authorization: Token <key>`` works too."""
    api_token = services.settings.api_token
    password = body.get("password")
    if not isinstance(password, str):
        raise BadRequest("password: required, a string")
    if api_token is not None and not authentication.equal(password, api_token):
        raise BadRequest("Unable to log in with provided credentials.")  # CVAT's words
    session, csrf = authentication.new_session(api_token)
    secure = request.url.scheme == "https"
    response.set_cookie("sessionid", session, max_age=authentication.SESSION_SECONDS, httponly=True,
                        samesite="lax", secure=secure)
    response.set_cookie("csrftoken", csrf, max_age=CSRF_COOKIE_SECONDS, samesite="lax", secure=secure)
    return {"key": authentication.login_key(api_token)}


@router.post("/api/auth/logout")
def logout(response: Response) -> dict:
    """Clears the cookies. The session is kept nowhere, so this is all there is to end: a copied
    ``sessionid`` stays good until it expires or ``API_TOKEN`` changes."""
    response.delete_cookie("sessionid")
    response.delete_cookie("csrftoken")
    return {"detail": "Successfully logged out."}  # CVAT's words
