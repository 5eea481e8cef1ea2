"""A local, Docker-free stand-in for nuclio that runs the function folders unchanged.

    python -m serverless.runtime serve <function dir | function.yaml> [--port N] [--host H]
    python -m serverless.runtime platform <tree> [--port 8070] [--host H] [--gpu]

``config`` validates function.yaml, ``worker`` is one worker process, ``processor`` serves one
function, ``platform`` runs a tree of functions behind the nuclio dashboard API subset CVAT uses,
``lifetime`` ends processors and workers with the process that started them.
"""
