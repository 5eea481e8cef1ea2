"""cvat-sdk auto-annotation functions (docs/wire-format.md §7) in our world, one implementation for
both directions, one module per job:

- ``loading``: cvat-cli's loading rules (``load_function``: a module by name or a file;
  ``create(**parameters)`` when the module has it, ``TypeError`` when it has not and parameters are
  given; ``parse_parameter`` reads ``-p NAME=TYPE:VALUE``) and ``function_kind``.
- ``spec``: what a function.yaml declares for a detection, interaction or tracking function
  (``spec_labels``, ``function_annotations``) and the whole file (``function_yaml``).
- ``rules``: ``LabelIndex.check``, the output rules that need only the function's own spec
  (``BadFunctionError``); the driver adds the task-side rules (``dispatcher.auto_annotation``).
- ``detection``, ``interaction``, ``tracking``: serving a function of each kind as a CVAT detector
  (``detection_items``: SDK annotations -> CVAT function result items, §1.6), interactor or tracker.
- ``serving``: ``handler``, the nuclio handler (``serverless.common.sdk:handler`` in function.yaml)
  that serves the function named by the ``SDK_FUNCTION_*`` settings.
- ``folders``: the other way, one of our detector folders as an SDK function
  (``FolderDetectionFunction``, behind ``serverless.sdk_functions``).
- ``__main__``: ``python -m serverless.common.sdk ... > function.yaml``.

The SDK's model objects (``cvat_sdk.models``) are read duck-typed: an unset optional field is an
``AttributeError`` on them, so ``hasattr`` means "set", as in the SDK's own driver. The names other
code imports from ``serverless.common.sdk`` are re-exported here.
"""

from serverless.common.sdk.detection import detection_context
from serverless.common.sdk.folders import FolderDetectionFunction
from serverless.common.sdk.loading import function_kind, load_function, parse_parameter
from serverless.common.sdk.rules import LabelIndex
from serverless.common.sdk.serving import handler, init_context
from serverless.common.sdk.spec import label_type, value

__all__ = ["FolderDetectionFunction", "LabelIndex", "detection_context", "function_kind", "handler", "init_context",
           "label_type", "load_function", "parse_parameter", "value"]
