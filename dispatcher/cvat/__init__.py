"""CVAT as the task store: a CVAT server's tasks annotated by the dispatcher's runs, its users as
the API's callers (docs/architecture.md §11).

- ``client``: the service account's HTTP client to CVAT's REST API;
- ``store``: ``CvatStore``, the task store interface over CVAT, with exactly-once writes;
- ``callers``: who is calling and what they may see, asked of CVAT with their own credentials.
"""
