"""The function catalogue as CVAT's ``/api/lambda/functions`` serves it, read from nuclio.

A function with invalid metadata (unknown kind, bad spec, duplicate labels: docs/wire-format.md §3.3) is
left out of the list, as CVAT does, and answers 500 with the reason when asked for by id. A
function that is not ready stays listed with its ``state`` and ``message`` (our extension fields),
and calling it answers 503 with the reason instead of CVAT's 500 (its defect, §D20).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import BadRequest
from dispatcher.gateway import Gateway, GatewayError
from serverless.common.metadata import FunctionMeta, LabelSpec, MetadataError

log = logging.getLogger("dispatcher")

# nuclio refuses to deploy any other name (its dashboard and controller check Kubernetes'
# IsQualifiedName; the optional "prefix/" part of it could not be one path segment anyway): letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit, at most 63 characters.
FUNCTION_ID_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
FUNCTION_ID_RULE = ("a nuclio function name: letters, digits, '-', '_' and '.', starting and ending with a letter or "
                    "digit, at most 63 characters")


def checked_function_id(function_id: str, where: str = "function") -> str:
    """``function_id`` if nuclio could have deployed a function of that name, else 400: it goes into
    dashboard paths and headers, where anything else could name another path or break the call."""
    if not (isinstance(function_id, str) and re.fullmatch(FUNCTION_ID_PATTERN, function_id)):
        raise BadRequest(f"{where}: {function_id!r} is not {FUNCTION_ID_RULE}")
    return function_id


class InvalidFunction(GatewayError):
    def __init__(self, function_id: str, error: MetadataError):
        super().__init__(500, f"function {function_id} has invalid metadata: {error}")


@dataclass(frozen=True)
class LambdaFunction:
    meta: FunctionMeta
    state: str  # nuclio's: ready, building, error, ...
    message: str
    http_port: int
    workers: int  # how many calls it serves at once: its HTTP trigger's workers times its replicas
    # "host:port" where the function itself answers, as nuclio's status.internalInvocationUrls
    # says (our platform reports it too); "" when the dashboard does not say
    address: str = ""


    @property
    def id(self) -> str:
        return self.meta.id

    @classmethod
    def from_config(cls, config: dict) -> LambdaFunction:
        status = config.get("status") or {}
        triggers = ((config.get("spec") or {}).get("triggers") or {}).values()
        http = next((t for t in triggers if isinstance(t, dict) and t.get("kind") == "http"), {})
        # numWorkers, or maxWorkers before nuclio 1.13; nuclio's default is one. On Kubernetes each
        # replica has that many: count the replicas nuclio always keeps (minReplicas, or a fixed
        # replicas), so calls in flight grow with the deployment but never outrun it.
        per_replica = http.get("numWorkers") or http.get("maxWorkers") or 1
        spec = config.get("spec") or {}
        replicas = max(int(spec.get("replicas") or 0), int(spec.get("minReplicas") or 0), 1)
        workers = int(per_replica) * replicas
        addresses = status.get("internalInvocationUrls") or []
        address = addresses[0] if isinstance(addresses, list) and addresses and isinstance(addresses[0], str) else ""
        # A dashboard that reports no state is taken at its word that the function exists and runs.
        return cls(FunctionMeta.from_nuclio(config), status.get("state") or "ready",
                   status.get("message") or "", int(status.get("httpPort") or 0), int(workers), address)

    def to_api(self) -> dict:
        """CVAT's function object (docs/wire-format.md §3.3), plus ``state`` and ``message``."""
        meta = self.meta
        body = {"id": meta.id, "kind": meta.kind, "name": meta.name, "description": meta.description,
                "version": meta.version, "labels_v2": [_label_v2(label) for label in meta.labels],
                "state": self.state, "message": self.message}
        if meta.kind == "interactor":
            body.update(min_pos_points=meta.min_pos_points, min_neg_points=meta.min_neg_points,
                        startswith_box=meta.startswith_box, startswith_box_optional=meta.startswith_box_optional,
                        help_message=meta.help_message, animated_gif=meta.animated_gif)
        elif meta.kind == "tracker":
            body["supported_shape_types"] = list(meta.supported_shape_types or ("rectangle",))
        return body


def _label_v2(label: LabelSpec) -> dict:
    entry = {"name": label.name, "type": label.type,
             "attributes": [{"name": a.name, "input_type": a.input_type, "values": list(a.values)}
                            for a in label.attributes]}
    if label.type == "skeleton":
        entry.update(sublabels=[_label_v2(sublabel) for sublabel in label.sublabels], svg=label.svg)
    return entry


class Registry:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def functions(self) -> list[LambdaFunction]:
        functions = []
        for config in self.gateway.function_configs():
            try:
                functions.append(LambdaFunction.from_config(config))
            except MetadataError as error:
                log.warning("leaving out function %s: %s", (config.get("metadata") or {}).get("name"), error)
        return sorted(functions, key=lambda function: function.id)

    def function(self, function_id: str, where: str = "function") -> LambdaFunction:
        config = self.gateway.function_config(checked_function_id(function_id, where))  # an unknown id is nuclio's 404
        try:
            return LambdaFunction.from_config(config)
        except MetadataError as error:
            raise InvalidFunction(function_id, error) from None

    @staticmethod
    def check_ready(function: LambdaFunction) -> None:
        """503 naming the state and nuclio's reason, for a function that cannot take calls."""
        if function.state != "ready":
            reason = f": {function.message}" if function.message else ""
            raise GatewayError(503, f"function {function.id} is not ready (state {function.state}){reason}")

    def call(self, function: LambdaFunction, payload: dict) -> Any:
        self.check_ready(function)
        return self.gateway.invoke(function.id, function.http_port, function.address, payload)
