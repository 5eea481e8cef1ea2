"""The one HTTP client to a CVAT server's REST API, as the dispatcher's service account.

CVAT's answers map to ours: 404 (and 400 about a missing task or job) -> ``NotFound``; other 4xx ->
``CvatRefused`` with CVAT's status and message; 5xx, timeouts and unreachable -> ``CvatUnavailable``,
which a chunk retries. A call that timed out may still have been applied: writers must not assume
either way (``dispatcher.cvat.store`` re-checks before writing again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from dispatcher.store import NotFound

PAGE_SIZE = 500  # CVAT's list endpoints are paginated; few tasks have more labels or jobs
READ_PATIENCE = 120  # seconds a read waits for CVAT to come back (a restart) before it fails


class CvatRefused(Exception):
    """CVAT answered 4xx: the API passes the status and message on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class CvatUnavailable(Exception):
    """CVAT did not answer, answered 5xx, or timed out: worth retrying."""


def message_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body)
    return str(body)


class CvatClient:
    def __init__(self, url: str, timeout: float, *, token: str | None = None, username: str | None = None,
                 password: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                 limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        self._token = token
        self._login = (username, password) if token is None else None

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict:
        if self._token is None:  # the service account's key, once
            username, password = self._login
            reply = self.request("POST", "/api/auth/login", authenticated=False,
                                 json={"username": username, "password": password})
            self._token = reply.json()["key"]
        return {"Authorization": f"Token {self._token}"}

    def request(self, method: str, path: str, *, authenticated: bool = True, **kwargs) -> httpx.Response:
        headers = {**(self._headers() if authenticated else {}), **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise CvatUnavailable(f"CVAT at {self.url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as error:
            raise CvatUnavailable(f"CVAT at {self.url} cannot be reached ({method} {path}): {error}") from None
        return self._check(response, method, path)

    @staticmethod
    def _check(response: httpx.Response, method: str, path: str) -> httpx.Response:
        if response.status_code >= 500:
            raise CvatUnavailable(f"CVAT answered {response.status_code} to {method} {path}: {message_of(response)}")
        if response.status_code == 404:
            raise NotFound(f"CVAT: {method} {path}: {message_of(response)}")
        if response.status_code >= 400:
            raise CvatRefused(response.status_code, f"CVAT refused {method} {path}: {message_of(response)}")
        return response

    def read(self, path: str, **params) -> httpx.Response:
        """A GET, retried with backoff while CVAT is unavailable (restarting, 5xx), up to READ_PATIENCE."""
        deadline, pause = time.monotonic() + READ_PATIENCE, 0.5
        while True:
            try:
                return self.request("GET", path, params=params)
            except CvatUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 15.0)

    def get(self, path: str, **params) -> Any:
        return self.read(path, **params).json()

    def all_pages(self, path: str, **params) -> list[dict]:
        results, page = [], 1
        while True:
            body = self.get(path, **params, page=page, page_size=PAGE_SIZE)
            results += body["results"]
            if not body.get("next"):
                return results
            page += 1

    # What the dispatcher reads

    def about(self) -> dict:
        """The server's name and version; answers once CVAT does (after READ_PATIENCE, fails)."""
        return self.get("/api/server/about")

    def task(self, task_id: int) -> dict:
        return self.get(f"/api/tasks/{task_id}")

    def job(self, job_id: int) -> dict:
        return self.get(f"/api/jobs/{job_id}")

    def labels(self, task_id: int) -> list[dict]:
        return self.all_pages("/api/labels", task_id=task_id)

    def jobs(self, task_id: int) -> list[dict]:
        return self.all_pages("/api/jobs", task_id=task_id)

    def data_meta(self, task_id: int) -> dict:
        return self.get(f"/api/tasks/{task_id}/data/meta")

    def chunk(self, task_id: int, number: int) -> bytes:
        """A chunk of the task's frames as stored (a ZIP of the original files, in frame order)."""
        return self.read(f"/api/tasks/{task_id}/data", type="chunk", number=number, quality="original").content

    def stream_chunk(self, task_id: int, number: int) -> Iterator[bytes]:
        """A chunk of the task's frames as stored (a ZIP of the original files, in frame order), as
        its bytes arrive. Not retried here: a reader that got part of it knows where to resume."""
        with self.http.stream("GET", f"/api/tasks/{task_id}/data", headers=self._headers(),
                              params={"type": "chunk", "number": number, "quality": "original"}) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response, "GET", f"/api/tasks/{task_id}/data?type=chunk&number={number}")
            yield from response.iter_bytes()

    def frame(self, task_id: int, number: int) -> bytes:
        """One frame's file as stored."""
        return self.read(f"/api/tasks/{task_id}/data", type="frame", number=number, quality="original").content

    def annotations(self, task_id: int, job_id: int | None = None) -> dict:
        path = f"/api/jobs/{job_id}/annotations" if job_id is not None else f"/api/tasks/{task_id}/annotations"
        return self.get(path)

    # What the dispatcher writes

    def create_annotations(self, task_id: int, job_id: int | None, data: dict) -> None:
        path = f"/api/jobs/{job_id}/annotations" if job_id is not None else f"/api/tasks/{task_id}/annotations"
        self.request("PATCH", path, params={"action": "create"}, content=json.dumps(data),
                     headers={"Content-Type": "application/json"})

    def put_annotations(self, task_id: int, job_id: int | None, data: dict) -> None:
        path = f"/api/jobs/{job_id}/annotations" if job_id is not None else f"/api/tasks/{task_id}/annotations"
        self.request("PUT", path, content=json.dumps(data), headers={"Content-Type": "application/json"})

    def delete_annotations(self, task_id: int, job_id: int | None) -> None:
        path = f"/api/jobs/{job_id}/annotations" if job_id is not None else f"/api/tasks/{task_id}/annotations"
        self.request("DELETE", path)
