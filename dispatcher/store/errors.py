"""What the task store refuses, as exceptions the API maps to statuses."""


class NotFound(LookupError):
    """No such task, job or frame (the API answers 404)."""


class InvalidInput(ValueError):
    """A request the store refuses (the API answers 400); the message starts with the field."""


class StaleRun(Exception):
    """A write from a run its request id no longer names: nothing was written."""
