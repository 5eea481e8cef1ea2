"""The function catalogue as CVAT's ``/api/lambda/functions`` serves it, read from nuclio.

A function with invalid metadata (unknown kind, bad spec, duplicate labels: docs/wire-format.md §3.3) is
left out of the list, as CVAT does, and answers 500 with the reason when asked for by id. A
function that is not ready stays listed with its ``state`` and ``message`` (our extension fields),
and calling it answers 503 with the reason instead of CVAT's 500 (its defect, §D20).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import BadRequest
from dispatcher.gateway import Gateway, GatewayError, Unreachable
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
class Replica:
    """One place a function runs: a dashboard that reports it, and where it answers there."""

    dashboard: str  # the dashboard's URL, one of NUCLIO_URL's
    state: str  # nuclio's: ready, building, error, ...
    message: str
    http_port: int
    workers: int  # how many calls it serves at once: its HTTP trigger's workers times nuclio's replicas
    # "host:port" where the function itself answers, as nuclio's status.internalInvocationUrls
    # says (our platform reports it too); "" when the dashboard does not say
    address: str = ""

    @property
    def name(self) -> str:
        """Stable across lookups: it names the replica's call slots."""
        return self.address or f"{self.dashboard}#{self.http_port}"

    @classmethod
    def from_config(cls, dashboard: str, config: dict) -> Replica:
        status = config.get("status") or {}
        triggers = ((config.get("spec") or {}).get("triggers") or {}).values()
        http = next((t for t in triggers if isinstance(t, dict) and t.get("kind") == "http"), {})
        # numWorkers, or maxWorkers before nuclio 1.13; nuclio's default is one. On Kubernetes each
        # replica has that many: count the replicas nuclio always keeps (minReplicas, or a fixed
        # replicas), so calls in flight grow with the deployment but never outrun it.
        per_replica = http.get("numWorkers") or http.get("maxWorkers") or 1
        spec = config.get("spec") or {}
        replicas = max(int(spec.get("replicas") or 0), int(spec.get("minReplicas") or 0), 1)
        addresses = status.get("internalInvocationUrls") or []
        address = addresses[0] if isinstance(addresses, list) and addresses and isinstance(addresses[0], str) else ""
        # A dashboard that reports no state is taken at its word that the function exists and runs.
        return cls(dashboard, status.get("state") or "ready", status.get("message") or "",
                   int(status.get("httpPort") or 0), int(per_replica) * replicas, address)


@dataclass(frozen=True)
class LambdaFunction:
    """A function as every dashboard that reports it sees it: one replica per dashboard. Its
    metadata is the first dashboard's (NUCLIO_URL's order)."""

    meta: FunctionMeta
    replicas: tuple[Replica, ...]

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def ready_replicas(self) -> tuple[Replica, ...]:
        return tuple(replica for replica in self.replicas if replica.state == "ready")

    @property
    def state(self) -> str:
        """Ready when any replica is; else the first replica's state."""
        return "ready" if self.ready_replicas else self.replicas[0].state

    @property
    def message(self) -> str:
        if self.ready_replicas:
            return ""
        return "; ".join(dict.fromkeys(replica.message for replica in self.replicas if replica.message))

    @property
    def workers(self) -> int:
        """Calls it serves at once, over its ready replicas."""
        return sum(replica.workers for replica in self.ready_replicas)

    @classmethod
    def from_configs(cls, configs: list[tuple[str, dict]]) -> LambdaFunction:
        """From the (dashboard, config) pairs of one function id."""
        return cls(FunctionMeta.from_nuclio(configs[0][1]),
                   tuple(Replica.from_config(dashboard, config) for dashboard, config in configs))

    @classmethod
    def from_config(cls, config: dict, dashboard: str = "") -> LambdaFunction:
        return cls.from_configs([(dashboard, config)])

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
        self._turns = itertools.count()  # spreads online calls over a function's replicas

    def functions(self) -> list[LambdaFunction]:
        by_id: dict[str, list[tuple[str, dict]]] = {}
        for dashboard, config in self.gateway.function_configs():
            by_id.setdefault((config.get("metadata") or {}).get("name"), []).append((dashboard, config))
        functions = []
        for name, configs in by_id.items():
            try:
                functions.append(LambdaFunction.from_configs(configs))
            except MetadataError as error:
                log.warning("leaving out function %s: %s", name, error)
        return sorted(functions, key=lambda function: function.id)

    def function(self, function_id: str, where: str = "function") -> LambdaFunction:
        # An unknown id is nuclio's 404.
        configs = self.gateway.function_config(checked_function_id(function_id, where))
        try:
            return LambdaFunction.from_configs(configs)
        except MetadataError as error:
            raise InvalidFunction(function_id, error) from None

    @staticmethod
    def check_ready(function: LambdaFunction) -> None:
        """503 naming the state and nuclio's reason, for a function that cannot take calls."""
        if function.state != "ready":
            reason = f": {function.message}" if function.message else ""
            raise GatewayError(503, f"function {function.id} is not ready (state {function.state}){reason}")

    def call(self, function: LambdaFunction, payload: dict, replica: Replica | None = None) -> Any:
        """The function's reply, from ``replica`` or else from its ready replicas in turn: a replica
        that cannot be reached (the call never arrived) passes the call to the next."""
        self.check_ready(function)
        if replica is not None:
            return self.gateway.invoke(function.id, replica, payload)
        ready = function.ready_replicas
        start = next(self._turns)
        turns = [ready[(start + turn) % len(ready)] for turn in range(len(ready))]
        for other in turns[:-1]:
            with contextlib.suppress(Unreachable):
                return self.gateway.invoke(function.id, other, payload)
        return self.gateway.invoke(function.id, turns[-1], payload)
