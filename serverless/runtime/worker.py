"""One nuclio worker: a process of its own that imports the handler, calls ``init_context`` once and
then serves the events its processor sends, as nuclio's Python wrapper does.

The processor starts it as ``python -m serverless.runtime.worker`` in the function directory, with
the function's ``spec.env`` applied and one end of a socket pair as ``--fd``. Frames in both
directions are a 4-byte big-endian length and a pickle (the peer is our own processor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import pickle
import signal
import socket
import struct
import sys
import traceback

import nuclio_sdk
import nuclio_sdk.json_encoder
import nuclio_sdk.logger
import orjson

from serverless.runtime.config import HANDLER
from serverless.runtime.lifetime import die_with_parent

FRAME_HEADER = struct.Struct(">I")
STDLIB_ONLY_BRACKETS = 512


def send_frame(sock: socket.socket, message: dict) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(FRAME_HEADER.pack(len(payload)) + payload)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            return None
        received += count
    return bytes(buffer)


def recv_frame(sock: socket.socket) -> dict | None:
    """The next message, or None when the processor has gone."""
    header = _recv_exactly(sock, FRAME_HEADER.size)
    if header is None:
        return None
    payload = _recv_exactly(sock, FRAME_HEADER.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


def _load_entrypoint(handler: str):
    module_name, function_name = HANDLER.match(handler).groups()
    module = __import__(module_name)
    for part in module_name.split(".")[1:]:
        module = getattr(module, part)
    return module, getattr(module, function_name)


def _parsed(body: bytes):
    """The JSON body parsed, or the bytes when it is not JSON. orjson first: a frame's base64 in a
    body parses in a fraction of the stdlib's time; what it refuses and the stdlib reads (NaN,
    Infinity, integers past 64 bits) is read as nuclio's Python wrapper reads it."""
    # orjson parses up to 1024 levels of nesting, deeper than the stdlib does under Python's
    # recursion limit, which the handlers' checks are written for: a body with STDLIB_ONLY_BRACKETS
    # brackets or more (a frame's base64 has none) goes the stdlib's way.
    if body.count(b"[") + body.count(b"{") < STDLIB_ONLY_BRACKETS:
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
    with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return json.loads(body.decode("utf-8"))
    return body


def _event(message: dict, trigger: nuclio_sdk.TriggerInfo) -> nuclio_sdk.Event:
    body = message["body"]
    # nuclio parses the body only for exactly this content type, and keeps the bytes if it is not JSON
    # (nested too deeply to parse included).
    if message["content_type"] == "application/json":
        body = _parsed(body)
    return nuclio_sdk.Event(
        body=body, content_type=message["content_type"], trigger=trigger, fields=message["fields"],
        headers=message["headers"], _id=message["id"], method=message["method"], path=message["path"],
        size=len(message["body"]), timestamp=datetime.datetime.fromtimestamp(message["timestamp"], datetime.UTC),
        url=message["url"],
    )


def _handler_error(error: BaseException) -> dict:
    return {
        "body": f'Exception caught in handler - "{error}": {traceback.format_exc()}',
        "body_encoding": "text",
        "content_type": "text/plain",
        "headers": {},
        "status_code": 500,
    }


def _resolve(loop: asyncio.AbstractEventLoop, value):
    return loop.run_until_complete(value) if inspect.isawaitable(value) else value


def serve(sock: socket.socket, handler: str, worker_id: int, trigger_name: str) -> int:
    logger = nuclio_sdk.Logger(logging.INFO, name=f"worker-{worker_id}")
    logger.set_handler("default", sys.stderr, nuclio_sdk.logger.HumanReadableFormatter())
    logger.bind(worker_id=worker_id)
    trigger = nuclio_sdk.TriggerInfo("http", trigger_name)
    encoder = nuclio_sdk.json_encoder.Encoder()
    loop = asyncio.new_event_loop()  # for async handlers and init_context, which nuclio also accepts

    try:
        module, entrypoint = _load_entrypoint(handler)
        context = nuclio_sdk.Context(logger, nuclio_sdk.Platform("local"), worker_id, trigger)
        if hasattr(module, "init_context"):
            _resolve(loop, module.init_context(context))
    except BaseException as error:  # noqa: BLE001 - whatever stops init is reported, then the worker ends
        logger.error_with("init_context failed", error=str(error), traceback=traceback.format_exc())
        send_frame(sock, {"kind": "init_failed", "error": f"{type(error).__name__}: {error}"})
        return 1
    send_frame(sock, {"kind": "ready"})

    while (message := recv_frame(sock)) is not None:
        try:
            output = _resolve(loop, entrypoint(context, _event(message, trigger)))
            response = nuclio_sdk.Response.from_entrypoint_output(encoder.encode, output)
        except Exception as error:  # noqa: BLE001 - nuclio answers 500 for any handler exception
            logger.warn_with("Exception caught in handler", error=str(error))
            response = _handler_error(error)
        send_frame(sock, response)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--trigger-name", required=True)
    parser.add_argument("--parent-pid", type=int, required=True, help="the processor; this worker ends with it")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid, signal.SIGKILL)  # a worker holds nothing worth a clean exit
    with socket.socket(fileno=args.fd) as sock:
        return serve(sock, args.handler, args.worker_id, args.trigger_name)


if __name__ == "__main__":
    sys.exit(main())
