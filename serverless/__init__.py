"""CVAT-compatible model functions (one folder per model), their shared toolkit and a local nuclio runtime.

Handlers import the toolkit as ``serverless.common``: the directory that holds ``serverless/`` is on
``sys.path`` next to the handler, both here (the local runtime adds the repository root) and in the
function images (``/opt/nuclio``, where nuclio runs the handler from).
"""
