"""The one HTTP client to nuclio (real, or our local platform): the function list and calls.

Errors map to statuses as CVAT's lambda manager maps them (docs/wire-format.md §3.8): cannot connect
-> 503, timeout -> 504, an HTTP error from nuclio or the function -> that status with its
message. One ``httpx.Client`` keeps connections alive across calls and threads.

With several dashboards (one per host) each is asked, side by side; one that cannot be reached (or
does not answer within ``LOOKUP_SECONDS``) is left out while another answers. A left-out dashboard
is asked again in the background, at most every ``DASHBOARD_RETRY_SECONDS``, and used again once it
answers: a lost host costs a lookup its timeout once, not on every lookup.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from dispatcher.settings import Settings

if TYPE_CHECKING:
    from dispatcher.registry import Replica

# Made once, on import: each client would otherwise load the certificates again (30 ms), and a
# plain `rq worker` makes a gateway in every child it forks for a chunk.
TLS = httpx.create_ssl_context()
# What CVAT sends with every dashboard call (docs/wire-format.md §2.3).
NUCLIO_HEADERS = {"x-nuclio-project-name": "cvat", "x-nuclio-function-namespace": "nuclio",
                  "x-nuclio-invoke-via": "domain-name"}
LOOKUP_SECONDS = 10.0  # a dashboard lists its functions within this, or counts as unreachable
DASHBOARD_RETRY_SECONDS = 5.0  # between background attempts to reach a dashboard left out


class GatewayError(Exception):
    """A failed call to nuclio or a function; ``status`` is what the API answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Unreachable(GatewayError):
    """Nothing answered at the address: the call never arrived, so trying elsewhere is safe."""

    def __init__(self, message: str):
        super().__init__(503, message)


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
        dashboards = len(settings.nuclio_urls)
        # Lookups side by side, and beside them the background attempts to reach dashboards left out.
        self._pool = ThreadPoolExecutor(2 * dashboards, thread_name_prefix="dashboards") if dashboards > 1 else None
        self._left_out: dict[str, float] = {}  # dashboard -> when it is next tried in the background
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()
        if self._pool is not None:
            self._pool.shutdown()

    def _request(self, method: str, url: str, what: str, **kwargs) -> httpx.Response:
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.ConnectError as error:
            raise Unreachable(f"cannot connect to {what} at {url}: {error}") from None
        except httpx.ConnectTimeout:
            raise Unreachable(f"cannot connect to {what} at {url}: no answer to connect") from None
        except httpx.TimeoutException:
            seconds = kwargs.get("timeout", self.settings.nuclio_timeout)
            raise GatewayError(504, f"{what} did not answer within {seconds:g}s") from None
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

    def function_configs(self) -> list[tuple[str, dict]]:
        """(dashboard, config) for every function each dashboard knows (each answers an object keyed by name)."""
        return [pair for pairs in self._from_each(self._listed, missing_ok=False) for pair in pairs]

    def _listed(self, dashboard: str) -> list[tuple[str, dict]]:
        response = self._request("GET", f"{dashboard}/api/functions", "nuclio", headers=NUCLIO_HEADERS,
                                 timeout=LOOKUP_SECONDS)
        return [(dashboard, config) for config in self._json(response, "nuclio").values()]

    def function_config(self, name: str) -> list[tuple[str, dict]]:
        """(dashboard, config) from each dashboard that has the function; nuclio's 404 if none has."""
        def found(dashboard: str) -> list[tuple[str, dict]]:
            # Escaped whole, so a name adds no segment, query or fragment ('..' is refused before: registry.py).
            url = f"{dashboard}/api/functions/{quote(name, safe='')}"
            response = self._request("GET", url, "nuclio", headers=NUCLIO_HEADERS, timeout=LOOKUP_SECONDS)
            return [(dashboard, self._json(response, "nuclio"))]

        return [pair for pairs in self._from_each(found, missing_ok=True) for pair in pairs]

    def _from_each(self, ask, *, missing_ok: bool) -> list:
        """``ask(dashboard)`` of every dashboard not left out, side by side. One that cannot be
        reached (or, with ``missing_ok``, answers 404) counts as having nothing while another
        answers; if none does, an unreachable one's error is raised, else the first's."""
        with self._lock:
            left_out = [url for url in self.settings.nuclio_urls if url in self._left_out]
        asked = [url for url in self.settings.nuclio_urls if url not in left_out] or left_out
        for dashboard in left_out:
            if dashboard not in asked:
                self._try_again_later(dashboard)

        def attempt(dashboard: str):
            try:
                return ask(dashboard)
            except GatewayError as error:
                return error

        outcomes = list(self._pool.map(attempt, asked)) if self._pool and len(asked) > 1 else map(attempt, asked)
        answers, errors = [], []
        for dashboard, outcome in zip(asked, outcomes):
            if not isinstance(outcome, GatewayError):
                with self._lock:
                    self._left_out.pop(dashboard, None)
                answers.append(outcome)
            elif _unreachable(outcome):
                with self._lock:
                    self._left_out.setdefault(dashboard, time.monotonic() + DASHBOARD_RETRY_SECONDS)
                errors.append(outcome)
            elif missing_ok and outcome.status == 404:
                errors.append(outcome)
            else:
                raise outcome  # nuclio answered with an error of its own
        if answers or not errors:
            return answers
        raise next((error for error in errors if _unreachable(error)), errors[0])

    def _try_again_later(self, dashboard: str) -> None:
        """One background attempt to list the dashboard's functions, when its time has come; the
        dashboard is used again once one succeeds."""
        with self._lock:
            due = self._left_out.get(dashboard, float("inf"))
            if due > time.monotonic():
                return
            self._left_out[dashboard] = float("inf")  # one attempt at a time

        def attempt():
            try:
                self._listed(dashboard)
            except GatewayError as error:
                if _unreachable(error):
                    with self._lock:
                        self._left_out[dashboard] = time.monotonic() + DASHBOARD_RETRY_SECONDS
                    return
            with self._lock:  # it answered
                self._left_out.pop(dashboard, None)

        self._pool.submit(attempt)

    def invoke(self, name: str, replica: Replica, payload: dict) -> Any:
        """Call a function's replica with a JSON payload; returns its parsed JSON reply. ``direct``
        posts to the replica's own ``address`` when its dashboard reports one (no proxy hop), else
        to NUCLIO_FUNCTION_HOST (or the dashboard's host) and its ``httpPort``, as CVAT does."""
        # orjson: a request carries frames as base64, which the stdlib's encoder scans character by
        # character (about 1 ms per COCO frame; orjson 0.03 ms).
        body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
        what = f"function {name}"
        if self.settings.nuclio_invoke_method == "direct":
            host = self.settings.nuclio_function_host or urlsplit(replica.dashboard).hostname
            url = f"http://{replica.address or f'{host}:{replica.http_port}'}/"
            response = self._request("POST", url, what, content=body, headers={"content-type": "application/json"})
        else:
            headers = {**NUCLIO_HEADERS, "content-type": "application/json", "x-nuclio-function-name": name,
                       "x-nuclio-path": "/", "x-nuclio-invoke-timeout": f"{self.settings.nuclio_timeout:g}s"}
            response = self._request("POST", f"{replica.dashboard}/api/function_invocations", what,
                                     content=body, headers=headers)
        return self._json(response, what)


def _unreachable(error: GatewayError) -> bool:
    """A dashboard that cannot be reached, or does not answer in time."""
    return isinstance(error, Unreachable) or error.status == 504
