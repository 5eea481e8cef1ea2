"""The one HTTP client to nuclio (real, or our local platform): the function list and calls.

Errors map to statuses as CVAT's lambda manager maps them (docs/wire-format.md §3.8): cannot connect
-> 503, timeout -> 504, an HTTP error from nuclio or the function -> that status with its
message. One ``httpx.Client`` keeps connections alive across calls and threads.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from dispatcher.settings import Settings

# Made once, on import: RQ forks a child per chunk from a worker that imported this module, and
# each child's client would otherwise load the certificates again (30 ms, a few % of a chunk).
TLS = httpx.create_ssl_context()
# What CVAT sends with every dashboard call (docs/wire-format.md §2.3).
NUCLIO_HEADERS = {"x-nuclio-project-name": "cvat", "x-nuclio-function-namespace": "nuclio",
                  "x-nuclio-invoke-via": "domain-name"}


class GatewayError(Exception):
    """A failed call to nuclio or a function; ``status`` is what the API answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _upstream_message(response: httpx.Response) -> str:
    """The readable part of an error reply: nuclio's {"error": ...}, or a function's text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        # FUNCTION_TOKEN on every call: our platform and functions check it, nuclio's dashboard passes it on.
        token = {"Authorization": f"Bearer {settings.function_token}"} if settings.function_token else {}
        self.client = httpx.Client(timeout=httpx.Timeout(settings.nuclio_timeout, connect=10.0), headers=token,
                                   verify=TLS, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    def close(self) -> None:
        self.client.close()

    def _request(self, method: str, url: str, what: str, **kwargs) -> httpx.Response:
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.ConnectError as error:
            raise GatewayError(503, f"cannot connect to {what} at {url}: {error}") from None
        except httpx.TimeoutException:
            raise GatewayError(504, f"{what} did not answer within {self.settings.nuclio_timeout:g}s") from None
        except httpx.HTTPError as error:
            raise GatewayError(500, f"calling {what} failed: {error}") from None
        if response.status_code >= 400:
            raise GatewayError(response.status_code, _upstream_message(response))
        return response

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except json.JSONDecodeError:
            raise GatewayError(502, f"{what} replied with something that is not JSON: "
                                    f"{response.text[:200]!r}") from None

    def function_configs(self) -> list[dict]:
        """Every function config the dashboard knows (it answers an object keyed by name)."""
        response = self._request("GET", f"{self.settings.nuclio_url}/api/functions", "nuclio", headers=NUCLIO_HEADERS)
        return list(self._json(response, "nuclio").values())

    def function_config(self, name: str) -> dict:
        # Escaped whole, so a name adds no segment, query or fragment ('..' is refused before: registry.py).
        url = f"{self.settings.nuclio_url}/api/functions/{quote(name, safe='')}"
        response = self._request("GET", url, "nuclio", headers=NUCLIO_HEADERS)
        return self._json(response, "nuclio")

    def invoke(self, name: str, http_port: int, address: str, payload: dict) -> Any:
        """Call a function with a JSON payload; returns its parsed JSON reply. ``direct`` posts to
        the function's own ``address`` when the dashboard reports one (no proxy hop), else to
        NUCLIO_FUNCTION_HOST and its ``httpPort``, as CVAT does."""
        # orjson: a request carries frames as base64, which the stdlib's encoder scans character by
        # character (about 1 ms per COCO frame; orjson 0.03 ms).
        body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
        what = f"function {name}"
        if self.settings.nuclio_invoke_method == "direct":
            url = f"http://{address or f'{self.settings.nuclio_function_host}:{http_port}'}/"
            response = self._request("POST", url, what, content=body, headers={"content-type": "application/json"})
        else:
            headers = {**NUCLIO_HEADERS, "content-type": "application/json", "x-nuclio-function-name": name,
                       "x-nuclio-path": "/", "x-nuclio-invoke-timeout": f"{self.settings.nuclio_timeout:g}s"}
            response = self._request("POST", f"{self.settings.nuclio_url}/api/function_invocations", what,
                                     content=body, headers=headers)
        return self._json(response, what)
