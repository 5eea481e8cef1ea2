"""``/api/lambda/functions``: the function catalogue and online calls (docs/wire-format.md §3.2 - §3.6)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from dispatcher import online_calls
from dispatcher.dependencies import CurrentCaller, Functions, Services, authenticate
from dispatcher.schemas import FUNCTION_CALLS, GUARDED, FunctionId, error_responses

router = APIRouter(prefix="/api/lambda/functions", tags=["lambda"], dependencies=[Depends(authenticate)],
                   responses=error_responses(*GUARDED, 503, 504))


@router.get("")
def list_functions(registry: Functions) -> list[dict]:
    """CVAT's function objects, plus ours ``state`` and ``message``; a broken function is listed."""
    return [function.to_api() for function in registry.functions()]


@router.get("/{function_id}", responses=error_responses(404))
def get_function(function_id: FunctionId, registry: Functions) -> dict:
    return registry.function(function_id, "function_id").to_api()


@router.post("/{function_id}", responses=error_responses(*FUNCTION_CALLS))
def call_function(function_id: FunctionId, body: Annotated[dict[str, Any], Body()], services: Services,
                  caller: CurrentCaller) -> Any:
    """One online call (docs/wire-format.md §3.4): detectors answer CVAT annotations, the other
    kinds the function's own reply (interactor masks put back into the frame, tracker states signed)."""
    return online_calls.call(services, services.registry.function(function_id, "function_id"), body, caller)
