"""The one shared toolkit for function handlers.

- ``settings``: the environment a function reads (models dir, OpenVINO device, limits).
- ``handler``: nuclio handler plumbing (JSON in/out, 400 for bad input) and the ``Detector`` protocol.
- ``images``: base64 frame decoding with clear errors and a pixel limit.
- ``metadata``: CVAT function annotations and the label spec.
- ``model_files``: the model-file catalogue (``models.yaml``), resolution, mirror and download.
- ``openvino_model``: OpenVINO loading and inference.
- ``detections``: detection result items.
- ``boxes``: the one box type.
- ``masks``: the function mask wire format, CVAT's RLE, mask to polygon.
- ``interactors``: interactor requests and replies, and the ``Interactor`` protocol.
- ``sdk``: cvat-sdk functions (a package, one module per job): loading, serving as nuclio functions,
  the output rules, function.yaml.
"""
