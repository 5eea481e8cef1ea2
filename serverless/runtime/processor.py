"""A local nuclio processor: one function, its HTTP trigger, and ``numWorkers`` worker processes.

What a handler and its callers can observe matches nuclio's processor:
- each worker is its own process and calls ``init_context`` once;
- a request waits at most ``workerAvailabilityTimeoutMilliseconds`` for a free worker (else 503);
- a body over ``maxRequestBodySize`` gets 413 before any worker sees it;
- a handler running past ``eventTimeout`` gets 504 and its worker is killed and replaced;
- a handler exception is 500 with nuclio's message, a crashed worker 500, and it is replaced.

``GET /__runtime/ready`` (reserved; every other path goes to the handler) answers 200 only once
every worker has finished ``init_context``, else 503; its JSON says ``state`` (building | ready |
error) and, for ``error``, the ``message`` (such as a missing model file and how to fetch it).
With ``FUNCTION_TOKEN`` set (the environment, or the function's spec.env), every other request
needs ``Authorization: Bearer <token>``: 401 before the body is read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

from serverless.common import settings
from serverless.common.handler import token_problem
from serverless.common.settings import CODE_ROOT
from serverless.runtime.config import FunctionConfig
from serverless.runtime.worker import FRAME_HEADER

READY_PATH = "/__runtime/ready"
log = logging.getLogger("serverless.runtime")


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain"
    headers: dict | None = None

    @classmethod
    def text(cls, status: int, message: str) -> Reply:
        return cls(status, message.encode())


class Worker:
    def __init__(self, worker_id: int, process: asyncio.subprocess.Process, reader, writer):
        self.id = worker_id
        self.process = process
        self._reader = reader
        self._writer = writer

    async def receive(self) -> dict:
        header = await self._reader.readexactly(FRAME_HEADER.size)
        return pickle.loads(await self._reader.readexactly(FRAME_HEADER.unpack(header)[0]))

    async def call(self, event: dict) -> dict:
        payload = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(FRAME_HEADER.pack(len(payload)) + payload)
        await self._writer.drain()
        return await self.receive()

    async def stop(self) -> int:
        """Kill the process (a worker in the middle of an event cannot be reused) and reap it."""
        self._writer.close()
        if self.process.returncode is None:
            self.process.kill()
        return await self.process.wait()


class WorkerPool:
    def __init__(self, config: FunctionConfig):
        self.config = config
        self.state = "building"
        self.message = ""
        self.ready_workers = 0
        self._idle: asyncio.LifoQueue[Worker] = asyncio.LifoQueue()
        self._workers: set[Worker] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def num_workers(self) -> int:
        return self.config.trigger.num_workers

    def start(self) -> None:
        for worker_id in range(self.num_workers):
            self._spawn(worker_id)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(worker.stop() for worker in list(self._workers)), return_exceptions=True)

    def _spawn(self, worker_id: int) -> None:
        task = asyncio.create_task(self._start_worker(worker_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_env(self) -> dict[str, str]:
        env = {**os.environ, **self.config.env}
        # serverless.common resolves from the directory holding serverless/, as it does in the images.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(CODE_ROOT)) if p)
        return env

    async def _start_worker(self, worker_id: int) -> None:
        parent, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serverless.runtime.worker", "--fd", str(child.fileno()),
                "--handler", self.config.handler, "--worker-id", str(worker_id),
                "--trigger-name", self.config.trigger.name, "--parent-pid", str(os.getpid()),
                cwd=self.config.directory, env=self._worker_env(), pass_fds=(child.fileno(),),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent, limit=1 << 20)
        worker = Worker(worker_id, process, reader, writer)
        self._workers.add(worker)
        try:
            first = await worker.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            first = {"kind": "init_failed",
                     "error": f"worker process exited during init_context (code {await process.wait()})"}
        if first.get("kind") != "ready":
            self._workers.discard(worker)
            await worker.stop()
            self.state, self.message = "error", f"init_context failed: {first.get('error')}"
            log.error("%s: worker %d %s", self.config.name, worker_id, self.message)
            return
        self.ready_workers += 1
        if self.ready_workers == self.num_workers and self.state == "building":
            self.state = "ready"
            log.info("%s: %d worker(s) ready", self.config.name, self.num_workers)
        self._idle.put_nowait(worker)

    async def _replace(self, worker: Worker) -> int:
        self._workers.discard(worker)
        self.ready_workers -= 1
        code = await worker.stop()
        if self.state != "error":
            self._spawn(worker.id)
        return code

    async def invoke(self, event: dict) -> Reply:
        if self.state == "error":
            return Reply.text(503, f"function {self.config.name} is not ready: {self.message}")
        trigger = self.config.trigger
        try:
            async with asyncio.timeout(trigger.worker_availability_timeout):
                worker = await self._idle.get()
        except TimeoutError:
            return Reply.text(503, f"no free worker within {trigger.worker_availability_timeout * 1000:.0f} ms "
                                   f"(numWorkers: {self.num_workers})")
        try:
            async with asyncio.timeout(self.config.event_timeout):
                response = await worker.call(event)
        except TimeoutError:
            await self._replace(worker)
            log.warning("%s: event exceeded eventTimeout; worker %d replaced", self.config.name, worker.id)
            return Reply.text(504, f"the handler did not finish within eventTimeout ({self.config.event_timeout:g}s); "
                                   "its worker was replaced")
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._replace(worker)
            log.error("%s: worker %d died (exit code %s); replaced", self.config.name, worker.id, code)
            return Reply.text(500, f"the worker process died while handling the event (exit code {code})")
        except BaseException:
            # The caller went away mid-event: the reply would reach the next caller, so start afresh.
            await asyncio.shield(self._replace(worker))
            raise
        self._idle.put_nowait(worker)
        return _reply_from_response(response)


def _reply_from_response(response: dict) -> Reply:
    body = response.get("body", "")
    if response.get("body_encoding") == "base64":
        content = base64.b64decode(body)
    else:
        content = body.encode() if isinstance(body, str) else bytes(body)
    return Reply(int(response.get("status_code", 200)), content, response.get("content_type") or "text/plain",
                 response.get("headers") or {})


def _canonical_header(name: str) -> str:
    """Go's canonical header form, which nuclio hands to handlers (content-type -> Content-Type)."""
    return "-".join(part.capitalize() for part in name.split("-"))


class ProcessorApp:
    """The ASGI application of one processor."""

    def __init__(self, config: FunctionConfig):
        self.config = config
        self.pool = WorkerPool(config)
        # As the handlers see it: this process's environment with the function's spec.env over it.
        self.token = settings.function_token({**os.environ, **config.env})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            reply = await self._http(scope, receive)
            if reply is not None:
                await _send(send, reply)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def readiness(self) -> Reply:
        pool = self.pool
        ready = pool.state == "ready" and pool.ready_workers == pool.num_workers
        body = {"function": self.config.name, "state": pool.state, "message": pool.message,
                "workers": pool.num_workers, "ready_workers": pool.ready_workers}
        return Reply(200 if ready else 503, json.dumps(body).encode(), "application/json")

    async def _http(self, scope, receive) -> Reply | None:
        if scope["path"] == READY_PATH and scope["method"] == "GET":
            return self.readiness()
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = _canonical_header(raw_name.decode("latin-1")), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value

        problem = token_problem(headers.get("Authorization", ""), self.token)
        if problem:  # refused before the body is read or a worker is taken
            return Reply(401, problem.encode(), headers={"WWW-Authenticate": "Bearer"})
        limit = self.config.trigger.max_request_body_size
        too_large = Reply.text(413, f"request body is larger than maxRequestBodySize ({limit} bytes)")
        if int(headers.get("Content-Length") or 0) > limit:
            return too_large
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                return too_large
            if not message.get("more_body"):
                break

        query = scope.get("query_string", b"").decode("latin-1")
        host = headers.get("Host", "localhost")
        event = {
            "id": str(uuid.uuid4()), "timestamp": time.time(), "method": scope["method"], "path": scope["path"],
            "url": f"{scope.get('scheme', 'http')}://{host}{scope['path']}" + (f"?{query}" if query else ""),
            "headers": headers, "content_type": headers.get("Content-Type", ""),
            "fields": dict(parse_qsl(query)), "body": bytes(body),
        }
        return await self.pool.invoke(event)


async def _send(send, reply: Reply) -> None:
    headers = [(b"content-type", reply.content_type.encode("latin-1"))]
    headers += [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (reply.headers or {}).items()
                if str(k).lower() not in ("content-type", "content-length")]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def serve(config: FunctionConfig, host: str, port: int) -> None:
    import uvicorn

    log.info("%s: serving %s on http://%s:%d", config.name, config.path, host, port)
    uvicorn.run(ProcessorApp(config), host=host, port=port, lifespan="on", access_log=False,
                log_level="warning", timeout_graceful_shutdown=5)
