"""The dispatcher's task API from Python: what the cvat-sdk driver (``dispatcher.auto_annotation``)
needs, in CVAT's REST shapes. Errors are ``ApiError`` with the status and the API's own words."""

from __future__ import annotations

import httpx

PAGE_SIZE = 1000  # the most a list page holds


class ApiError(Exception):
    def __init__(self, status: int, detail: str, what: str):
        super().__init__(f"{what}: {status} {detail}")
        self.status, self.detail = status, detail


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, what: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(503, f"cannot reach the dispatcher at {self.url}: {error}", what) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail), what)
        return response

    def task(self, task_id: int) -> dict:
        """The task, as CVAT's TaskRead (its labels and jobs are lists of their own)."""
        return self._request("GET", f"/api/tasks/{task_id}", f"task {task_id}").json()

    def labels(self, task_id: int) -> list[dict]:
        """The task's labels (ids, types, attributes, sublabels), every page."""
        return self._all_pages("/api/labels", f"task {task_id} labels", task_id=task_id)

    def jobs(self, task_id: int) -> list[dict]:
        return self._all_pages("/api/jobs", f"task {task_id} jobs", task_id=task_id)

    def _all_pages(self, path: str, what: str, **params) -> list[dict]:
        """A CVAT paginated list, every page (``next`` is followed by page number, as cvat-sdk does)."""
        results, page = [], 1
        while True:
            body = self._request("GET", path, what, params={**params, "page": page, "page_size": PAGE_SIZE}).json()
            results += body["results"]
            if not body["next"]:
                return results
            page += 1

    def frames_meta(self, task_id: int) -> dict:
        return self._request("GET", f"/api/tasks/{task_id}/data/meta", f"task {task_id} frames").json()

    def frame(self, task_id: int, number: int) -> bytes:
        """The frame's file as uploaded."""
        return self._request("GET", f"/api/tasks/{task_id}/data", f"task {task_id} frame {number}",
                             params={"type": "frame", "number": number, "quality": "original"}).content

    def replace_annotations(self, task_id: int, data: dict) -> dict:
        return self._request("PUT", f"/api/tasks/{task_id}/annotations", f"task {task_id} annotations",
                             json=data).json()

    def add_annotations(self, task_id: int, data: dict) -> dict:
        return self._request("PATCH", f"/api/tasks/{task_id}/annotations", f"task {task_id} annotations",
                             params={"action": "create"}, json=data).json()
