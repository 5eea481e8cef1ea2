"""The dispatcher: CVAT's /api/lambda API, task store and task-wide annotation jobs."""
