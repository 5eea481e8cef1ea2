"""The task store (standalone mode): tasks, labels, jobs, frames and annotations in CVAT's REST
shapes, on SQLite by default and PostgreSQL through ``DATABASE_URL``.

- ``store``: the ``Store`` the API and the workers use, made of its own methods (tasks, labels,
  jobs, annotations, exports), ``frame_files.FrameFiles`` and ``request_writes.RequestWrites``;
- ``tables``: the tables and the engine; ``rows``: statements the parts share;
- ``validation``: what is accepted (labels, image files, annotations), with messages naming the field;
- ``server_files``: files under ``SERVER_FILES_ROOT``, confined to it;
- ``exports``: COCO JSON and CVAT for images 1.1 XML;
- ``errors``: what the store refuses.
"""

from dispatcher.store.errors import InvalidInput, NotFound, StaleRun
from dispatcher.store.store import Store
from dispatcher.store.tables import metadata

__all__ = ["InvalidInput", "NotFound", "StaleRun", "Store", "metadata"]
