"""Who is calling, and may they, asked of CVAT: the caller's own credentials (CVAT's session cookie,
``Authorization: Token``, ``Bearer`` or ``Basic``) go to CVAT's ``/api/users/self``, and to the
target task or job, and CVAT's answer stands (docs/wire-format.md §9.6). Answers are trusted for
``AUTH_CACHE_SECONDS``, so a run's polling does not ask CVAT every time."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import httpx
from fastapi import Request

from dispatcher.authentication import check_csrf
from dispatcher.cvat.client import CvatRefused, CvatUnavailable, message_of
from dispatcher.store import NotFound

# What identifies a caller to CVAT by session (CSRF does not apply to the reads asked of CVAT).
FORWARDED_COOKIES = ("sessionid", "csrftoken")


@dataclass(frozen=True)
class Caller:
    id: int
    username: str
    is_admin: bool  # CVAT's superusers and its "admin" group may cancel anyone's request
    credentials: tuple[tuple[str, str], ...]  # the headers that present them to CVAT

    @property
    def owner(self) -> dict:
        return {"id": self.id, "username": self.username}


class CvatCallers:
    def __init__(self, url: str, timeout: float, cache_seconds: float):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(timeout, connect=10.0))
        self.cache_seconds = cache_seconds
        self._answers: dict[tuple, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def identify(self, request: Request) -> Caller:
        """The caller the request's credentials name; CVAT's refusal (401) otherwise. An
        ``Authorization`` header is decisive (as CVAT's token authentication comes first); a call
        by session cookie passes Django's CSRF check first, as CVAT's own views would demand."""
        if request.headers.get("authorization"):
            credentials = (("Authorization", request.headers["authorization"]),)
        elif "sessionid" in request.cookies:
            check_csrf(request)
            credentials = (("Cookie", "; ".join(f"{name}={request.cookies[name]}" for name in FORWARDED_COOKIES
                                                if name in request.cookies)),)
        else:
            raise CvatRefused(401, "authentication required: CVAT's session, or Authorization: Token, Bearer or "
                                   "Basic with a CVAT user's credentials")
        user = self._ask(("self", credentials), "/api/users/self", credentials)
        return Caller(user["id"], user["username"],
                      bool(user.get("is_superuser")) or "admin" in (user.get("groups") or []), credentials)

    def check_target(self, caller: Caller, task_id: int, job_id: int | None = None) -> None:
        """The caller may see the task (or the job): else CVAT's own status (403, 404)."""
        path = f"/api/jobs/{job_id}" if job_id is not None else f"/api/tasks/{task_id}"
        self._ask((path, caller.credentials), path, caller.credentials)

    def may_see(self, caller: Caller, task_id: int, job_id: int | None = None) -> bool:
        try:
            self.check_target(caller, task_id, job_id)
        except (CvatRefused, NotFound):
            return False
        return True

    def _ask(self, key: tuple, path: str, credentials: tuple) -> dict:
        key = (hashlib.sha256(repr(key).encode()).hexdigest(),)  # never keep the credentials themselves
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and now - hit[0] <= self.cache_seconds:
            return hit[1]
        try:
            response = self.http.get(path, headers=dict(credentials))
        except httpx.HTTPError as error:
            raise CvatUnavailable(f"CVAT cannot be reached to check the caller: {error}") from None
        if response.status_code >= 500:
            raise CvatUnavailable(f"CVAT answered {response.status_code} checking the caller: {message_of(response)}")
        if response.status_code == 404:
            raise NotFound(f"CVAT: {path}: {message_of(response)}")
        if response.status_code >= 400:
            raise CvatRefused(response.status_code, f"CVAT refused {path}: {message_of(response)}")
        answer = response.json()
        with self._lock:
            self._answers[key] = (now, answer)
            if len(self._answers) > 10_000:  # long-lived API processes: drop what has expired
                self._answers = {k: v for k, v in self._answers.items() if now - v[0] <= self.cache_seconds}
        return answer

