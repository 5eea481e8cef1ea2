"""Our detectors as ready-made cvat-sdk detection functions (docs/wire-format.md §7.6), for
``python -m dispatcher auto-annotate --function-module serverless.sdk_functions.<name>``, cvat-cli's
``task auto-annotate`` against a real CVAT, or any code that takes a cvat-sdk function:

- ``face_detection``: face-detection-0205 with age, gender and emotion attributes;
- ``yolo_v3``: YOLO v3 (the official yolo-v3-tf IR, else the yolo-v3-tiny stand-in), 80 COCO labels;
- ``text_detection``: PP-OCRv4 text regions (default) or text-detection-0004, as masks.

Each module has ``create(...)``, as cvat-cli expects of a factory; the model is the function
folder's own code, loaded once per ``create`` call (``serverless.common.sdk.FolderDetectionFunction``).
"""
