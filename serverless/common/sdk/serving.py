"""The nuclio entry point ``serverless.common.sdk:handler``: ``init_context`` loads the function the
``SDK_FUNCTION_*`` settings name and serves it as its kind's handler."""

from __future__ import annotations

from cvat_sdk.auto_annotation import BadFunctionError

from serverless.common import settings
from serverless.common.sdk.detection import serve_detection
from serverless.common.sdk.interaction import serve_interaction
from serverless.common.sdk.loading import function_kind, load_function
from serverless.common.sdk.tracking import serve_tracking


def init_context(context):
    function_settings = settings.current()
    function = load_function(function_settings.sdk_function_module, function_settings.sdk_function_file,
                             function_settings.sdk_function_parameters)
    kind = function_kind(function)
    context.logger.info(f"Serving cvat-sdk {kind} function "
                        f"{function_settings.sdk_function_module or function_settings.sdk_function_file}")
    serve = {"detector": serve_detection, "interactor": serve_interaction, "tracker": serve_tracking}[kind]
    context.user_data.handler = serve(function)


def handler(context, event):
    try:
        return context.user_data.handler(context, event)
    except BadFunctionError as error:
        # The function broke the SDK's protocol: the function's fault (500), said in words.
        return context.Response(body=f"the cvat-sdk function broke its protocol: {error}",
                                status_code=500, content_type="text/plain")
