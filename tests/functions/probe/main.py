"""Test-only handler: describes the event and context it got, or sleeps, raises, exits, returns
each form nuclio accepts or answers a given status, as the request asks."""

import os
import time

import serverless.common.handler

_init_calls = 0


def init_context(context):
    global _init_calls
    if os.environ.get("PROBE_INIT_FAIL"):
        raise RuntimeError(os.environ["PROBE_INIT_FAIL"])
    time.sleep(float(os.environ.get("PROBE_INIT_DELAY", "0")))
    _init_calls += 1
    context.user_data.init_calls = _init_calls


RETURN_FORMS = {
    "response": lambda context: context.Response(body="made", headers={"X-Probe": "yes"},
                                                 content_type="text/x-probe", status_code=201),
    "str": lambda context: "plain text",
    "bytes": lambda context: b"\x00\x01binary",
    "dict": lambda context: {"a": 1},
    "list": lambda context: [1, 2],
    "tuple": lambda context: (202, {"accepted": True}),
}


def handler(context, event):
    body = event.body
    if "PROBE_DETECT_SECONDS" in os.environ and isinstance(body, dict) and ("image" in body or "images" in body):
        # A detector as slow as asked per frame: one "thing" per frame, so tests can count frames
        # annotated; a batch ({"images": [...]}) gets one list per frame.
        frames = len(body["images"]) if "images" in body else 1
        time.sleep(float(os.environ["PROBE_DETECT_SECONDS"]) * frames)
        if os.environ.get("PROBE_DETECT_MASK"):  # a filled 20 x 10 mask at (5, 5), CVAT's function mask format
            items = [{"label": "thing", "type": "mask", "points": [], "confidence": "1.0",
                      "mask": [255] * 200 + [5, 5, 24, 14]}]
        else:
            items = [{"label": "thing", "type": "rectangle", "points": [1, 2, 3, 4], "confidence": "1.0"}]
        return [items] * frames if "images" in body else items
    action = body.get("action") if isinstance(body, dict) else None
    if action == "sleep":
        time.sleep(body["seconds"])
        return {"slept": body["seconds"], "pid": os.getpid()}
    if action == "raise":
        raise ValueError(body["message"])
    if action == "exit":
        os._exit(3)
    if action == "return":
        return RETURN_FORMS[body["form"]](context)
    if action == "status":  # answer any status, as a function would for bad input (400) and so on
        return context.Response(body=body["message"], status_code=body["status"], content_type="text/plain")
    return {
        "pid": os.getpid(),
        "worker_id": context.worker_id,
        "init_calls": context.user_data.init_calls,
        "body_type": type(body).__name__,
        "body": body if isinstance(body, dict) else body.decode("latin-1"),
        "method": event.method,
        "path": event.path,
        "content_type": event.content_type,
        "headers": dict(event.headers),
        "fields": event.fields,
        "trigger": [event.trigger.kind, event.trigger.name],
        "env": os.environ.get("PROBE_ENV"),
        "common_module": serverless.common.handler.__file__,
        "cwd": os.getcwd(),
    }
