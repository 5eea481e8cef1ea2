"""Errors the API answers with a 4xx, raised anywhere below it; ``dispatcher.api`` maps each type
to its status. The message is the whole answer, so it starts with the field it is about."""

from __future__ import annotations


class BadRequest(Exception):
    """400: the caller's input is wrong."""


class Unauthorized(Exception):
    """401: no valid credentials; without a message, the API says which ones it takes."""


class Forbidden(Exception):
    """403: valid credentials, but the call is refused (a session call without its CSRF token)."""
