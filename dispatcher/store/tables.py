"""The task store's tables, and the engine: SQLite by default, PostgreSQL through a URL.

SQLAlchemy Core (tables and explicit statements) gives one code path for both databases.
Annotations are CVAT's LabeledData: one row per tag, shape or track, its frame and label in columns
and the rest as JSON.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)

metadata = MetaData()

# sqlite_autoincrement: ids are never reused after a delete, as in CVAT.
tasks = Table(
    "tasks", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False),
    Column("segment_size", Integer),  # None: one job with every frame
    Column("created_date", DateTime(timezone=True), nullable=False),
    # When the task, its frames or its annotations last changed (CVAT's updated_date: cvat-sdk's
    # local cache of a task is keyed on it), and when its frames last changed (data/meta's
    # chunks_updated_date). Nullable only because databases made before them get them by
    # ALTER TABLE (``migrate``); every write sets them.
    Column("updated_date", DateTime(timezone=True)),
    Column("data_updated_date", DateTime(timezone=True)),
    sqlite_autoincrement=True,
)
labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("parent_id", ForeignKey("labels.id", ondelete="CASCADE")),  # a skeleton's sublabels
    Column("position", Integer, nullable=False),
    Column("name", String, nullable=False),
    Column("type", String, nullable=False),
    Column("svg", Text),
    sqlite_autoincrement=True,
)
attributes = Table(
    "attributes", metadata,
    Column("id", Integer, primary_key=True),
    Column("label_id", ForeignKey("labels.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("name", String, nullable=False),
    Column("input_type", String, nullable=False),
    Column("mutable", Boolean, nullable=False),
    Column("default_value", String, nullable=False),
    Column("values", JSON, nullable=False),
    sqlite_autoincrement=True,
)
jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("start_frame", Integer, nullable=False),
    Column("stop_frame", Integer, nullable=False),  # inclusive, as CVAT's
    sqlite_autoincrement=True,
)
frames = Table(
    "frames", metadata,
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("name", String, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    # An upload: relative to data_dir. A server file: relative to the server files root.
    Column("path", String, nullable=False),
    Column("server_file", Boolean, nullable=False),
)
annotations = Table(
    "annotations", metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String, nullable=False),  # "tags", "shapes" or "tracks", as LabeledData names them
    Column("frame", Integer, nullable=False),  # a track's first frame
    Column("label_id", ForeignKey("labels.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", String),  # the request whose results these are, until it is forgotten
    Column("content", JSON, nullable=False),  # the item as get_annotations returns it, less its id
    Index("annotations_task_frame", "task_id", "frame"),
    Index("annotations_request_frame", "request_id", "frame"),
    sqlite_autoincrement=True,
)
# One row per request whose cleanup has run: inserting it is what claims the cleanup.
requests_cleanup = Table(
    "requests_cleanup", metadata,
    Column("request_id", String, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
)
# The run each request id names now: a chunk of any other run of that id (canceled, or on a host
# that lost its link) writes nothing. The row lock serialises a new run's start and the old run's
# last writes, so each write lands either before the new run took over or not at all.
request_runs = Table(
    "request_runs", metadata,
    Column("request_id", String, primary_key=True),
    Column("run", String, nullable=False),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("tracks_written", Boolean, nullable=False),  # ReID: its tracks replaced the rectangles
)
# The latest attempt of each chunk of a request: an older attempt (its worker lost its link, and
# the chunk ran again elsewhere) writes nothing once a newer one has begun.
chunk_attempts = Table(
    "chunk_attempts", metadata,
    Column("request_id", String, primary_key=True),
    Column("chunk_id", String, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
)
# The frames a request has written results for, with no shapes too; the row lock serialises two
# writers of one (request, frame).
request_frames = Table(
    "request_frames", metadata,
    Column("request_id", String, primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
)

# The current run of each request id, as the API shows it, and its units' outcomes: kept here as well
# as in Redis so that a request outlives a Redis that restarts empty (docs/architecture.md §12). No
# foreign key to tasks: fronting CVAT, the tasks are CVAT's.
request_records = Table(
    "request_records", metadata,
    Column("request_id", String, primary_key=True),
    Column("run", String, nullable=False, unique=True),
    Column("kind", String, nullable=False),
    Column("function_id", String, nullable=False),
    Column("task_id", Integer, nullable=False, index=True),
    Column("job_id", Integer),
    Column("parameters", JSON, nullable=False),
    Column("owner", JSON),
    Column("units", JSON, nullable=False),  # the run's units, in order, as planned when it was created
    Column("plan", JSON, nullable=False),  # chunk_size, block, unit_timeout: how to queue them again
    Column("status", String, nullable=False),
    Column("enqueued", Float, nullable=False),
    Column("started", Float),
    Column("ended", Float),
    Column("expires", Float),  # when it leaves the list, as its Redis record's TTL
    Column("exc_info", Text),
    Column("cancel_requested", Boolean, nullable=False),
    # Bumped by each queueing of the run's units: recovery's compare-and-set, so that two processes
    # that notice the same lost run queue it once.
    Column("generation", Integer, nullable=False),
    Column("submitted", Boolean, nullable=False),  # every chunk of this generation is queued
    Column("updated", Float, nullable=False),
)
# Units that failed for good, with the reason, and ReID's matched pairs (done, with their links). A
# detector's done frames are the frames its run wrote (``request_frames``, or CVAT's staged frames).
request_units = Table(
    "request_units", metadata,
    Column("run", String, primary_key=True),
    Column("unit", Integer, primary_key=True),
    Column("reason", Text),  # None: done
    Column("links", JSON),
)


# Columns added after the first release, as (table, column, the column an existing row's value is
# copied from), added to an existing database by ``migrate``.
ADDED_COLUMNS = (("tasks", "updated_date", "created_date"), ("tasks", "data_updated_date", "created_date"))


def migrate(connection) -> None:
    """Bring a database made by an earlier release up to these tables: ``metadata.create_all``
    makes missing tables but never adds columns. Each added column is nullable and filled from
    what the row already knows (a task's dates from its ``created_date``), in the caller's
    transaction, which holds the schema lock (PostgreSQL's advisory lock, SQLite's write lock)."""
    present: dict[str, set[str]] = {}
    for table_name, column_name, filled_from in ADDED_COLUMNS:
        if table_name not in present:
            present[table_name] = {column["name"] for column in inspect(connection).get_columns(table_name)}
        if column_name in present[table_name]:
            continue
        column = metadata.tables[table_name].c[column_name]
        column_type = column.type.compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {column_name} {column_type}")
        connection.exec_driver_sql(f"UPDATE {table_name} SET {column_name} = {filled_from}")
        present[table_name].add(column_name)


def open_engine(database_url: str):
    if not database_url.startswith("sqlite"):
        return create_engine(database_url, pool_pre_ping=True)
    engine = create_engine(database_url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # SQLAlchemy, not pysqlite, decides where transactions begin (pysqlite would begin only at
        # the first write, leaving earlier reads outside the transaction).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers do not wait for a writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock up front: two deferred transactions that both read and then write
        # would fail with "database is locked" instead of waiting for each other.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
