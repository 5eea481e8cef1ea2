"""Tasks that live in a CVAT server: what the dispatcher reads from them and how it writes results
into them exactly once (docs/architecture.md §11).

Reads go to CVAT's REST API as the service account: the task, its labels and jobs, the frame sizes
(``data/meta``, deleted frames skipped), and frames from CVAT's original-quality chunks (one ZIP of
``data_chunk_size`` frames per request), the next chunk fetched ahead while calls run; a video
task's frames one by one, as CVAT decodes them.

Writes are staged first, in the dispatcher's own database: a chunk's results, per (run, frame),
before anything is sent to CVAT. Then, job by job, holding the run's row (so a newer run of the
request id waits, and a replaced run writes nothing), the frames not yet known to be written are
sent in one ``PATCH ?action=create`` of the job's annotations (CVAT applies it in one transaction)
and marked written. A frame staged by an attempt that did not finish (its worker died, CVAT
restarted, a call timed out after CVAT had applied it, or before CVAT applied it) is looked for in
CVAT first, once that attempt has had time to land (``_settle``): if its staged shapes are there, it
is marked written, else written again, with the staged content, never a recomputed one. So every
frame's shapes reach CVAT exactly once. ReID's tracks replace the target's rectangles with one
``PUT`` of the target's annotations, which is idempotent by itself.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import JSON, Boolean, Column, Integer, MetaData, String, Table, delete, insert, select, update
from stream_unzip import NotStreamUnzippable, UnzipError, stream_unzip

from dispatcher.converter import TaskAttribute, TaskLabel
from dispatcher.cvat.client import READ_PATIENCE, CvatClient, CvatUnavailable
from dispatcher.store import InvalidInput, NotFound
from dispatcher.store.request_records import RequestRecords
from dispatcher.store.rows import hold_run, upsert
from dispatcher.store.tables import metadata as store_metadata
from dispatcher.store.tables import open_engine, request_records, request_units

metadata = MetaData()
# The run each request id names now (as the local store's request_runs), and whether ReID's tracks
# were put.
cvat_runs = Table(
    "cvat_runs", metadata,
    Column("request_id", String, primary_key=True),
    Column("run", String, nullable=False),
    Column("task_id", Integer, nullable=False),
    Column("tracks_written", Boolean, nullable=False),
)
# A run's results per frame, staged before they go to CVAT, and whether they are there.
cvat_frames = Table(
    "cvat_frames", metadata,
    Column("run", String, primary_key=True),
    Column("frame", Integer, primary_key=True),
    Column("written", Boolean, nullable=False),
    Column("content", JSON, nullable=False),  # {"tags": [...], "shapes": [...]}
)
CACHED_CHUNKS = 4  # per worker process: a chunk's CVAT chunks (one, as chunks are planned) and slack
WRITE_PATIENCE = 300  # seconds a write waits for CVAT to come back (restarts, 5xx) before the chunk fails


class CvatStore:
    """The task store interface of ``dispatcher.store.Store``, for tasks that live in CVAT."""

    def __init__(self, client: CvatClient, database_url: str | None, data_dir: Path, cache_seconds: float,
                 *, chunks: bool):
        """``chunks``: read frames by CVAT's chunks, streamed (the workers, which go through every
        frame); else one frame per request (the API's online calls)."""
        self.cvat = client
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._engine = open_engine(database_url or f"sqlite:///{data_dir / 'dispatcher.sqlite3'}")
        metadata.create_all(self._engine)
        store_metadata.create_all(self._engine, tables=[request_records, request_units])
        self.request_records = RequestRecords(self._engine, self.written_frames)
        self._cache_seconds = cache_seconds
        self._cached: dict[tuple, tuple[float, Future]] = {}
        self._lock = threading.Lock()
        self._loads = ThreadPoolExecutor(4, thread_name_prefix="cvat-reads")
        self._chunks = _ChunkStreams(client) if chunks else None

    def close(self) -> None:
        if self._chunks is not None:
            self._chunks.close()
        self._loads.shutdown(wait=False, cancel_futures=True)
        self._engine.dispose()
        self.cvat.close()

    def _load(self, key: tuple, load) -> Future:
        """CVAT's task, labels, jobs and frame sizes change rarely within a run: read once a while,
        in the background, so that several reads wait for CVAT side by side."""
        now = time.monotonic()
        with self._lock:
            hit = self._cached.get(key)
            if hit is None or now - hit[0] > self._cache_seconds or (hit[1].done() and hit[1].exception()):
                hit = (now, self._loads.submit(load))
                self._cached[key] = hit
        return hit[1]

    def _remember(self, key: tuple, load):
        return self._load(key, load).result()

    def prepare(self, task_id: int, frames: list[int]) -> None:
        """A chunk is about to read these frames: ask CVAT for what it will need at once, the task's
        description and its frames' CVAT chunks (streamed, so the first frames are there early)."""
        self._load(("task", task_id), lambda: self.cvat.task(task_id))
        self._load(("labels", task_id), lambda: self.cvat.labels(task_id))
        self._load(("meta", task_id), lambda: self.cvat.data_meta(task_id))
        self._load(("jobs", task_id), lambda: self._annotation_jobs(task_id))
        if self._chunks is not None and frames:
            self._loads.submit(self._start_chunks, task_id, frames)

    def _start_chunks(self, task_id: int, frames: list[int]) -> None:
        try:
            task = self.get_task(task_id)
        except Exception:  # noqa: BLE001 - the chunk's own reads meet the error and report it
            return
        if task["chunks_of_images"]:
            for number in sorted({frame // task["data_chunk_size"] for frame in frames}):
                self._chunks.start(task_id, number)

    def frames_per_read(self, task_id: int) -> int:
        """Frames CVAT serves in one read (an original-quality chunk); chunks are planned by them."""
        task = self.get_task(task_id)
        return task["data_chunk_size"] if task["chunks_of_images"] and task["data_chunk_size"] else 1

    # Tasks, jobs, frames

    def get_task(self, task_id: int) -> dict:
        task = self._remember(("task", task_id), lambda: self.cvat.task(task_id))
        return {"id": task["id"], "name": task["name"], "size": task.get("size") or 0,
                "data_chunk_size": task.get("data_chunk_size") or 0,
                # Original chunks of a video task are video files, not ZIPs of frames.
                "chunks_of_images": task.get("data_original_chunk_type") == "imageset"}

    def get_job(self, job_id: int) -> dict:
        job = self._remember(("job", job_id), lambda: self.cvat.job(job_id))
        if job.get("type", "annotation") != "annotation":
            raise InvalidInput(f"job: job {job_id} is a {job['type']} job; requests annotate annotation jobs")
        meta = self._meta(job["task_id"])
        start, step = meta["start_frame"], _step(meta["frame_filter"])
        # CVAT keeps a job's bounds in the data's own frame numbers; task frames count from 0 by step.
        return {"id": job["id"], "task_id": job["task_id"], "start_frame": (job["start_frame"] - start) // step,
                "stop_frame": (job["stop_frame"] - start) // step}

    def job_frames(self, job_id: int) -> list[int]:
        job = self.get_job(job_id)
        return self._without_deleted(job["task_id"], range(job["start_frame"], job["stop_frame"] + 1))

    def target_frames(self, task_id: int, job_id: int | None) -> list[int]:
        if job_id is not None:
            return self.job_frames(job_id)
        return self._without_deleted(task_id, range(self.get_task(task_id)["size"]))

    def _without_deleted(self, task_id: int, frames) -> list[int]:
        deleted = set(self._meta(task_id).get("deleted_frames") or ())
        return [frame for frame in frames if frame not in deleted]

    def _meta(self, task_id: int) -> dict:
        return self._remember(("meta", task_id), lambda: self.cvat.data_meta(task_id))

    def _frames(self, task_id: int) -> list[dict]:
        """data/meta's frame entries, one per frame of the task: CVAT lists a video once, its one
        entry standing for every frame."""
        meta = self._meta(task_id)
        frames = meta["frames"]
        return frames * meta["size"] if len(frames) == 1 and meta.get("size", 1) > 1 else frames

    def frames_meta(self, task_id: int) -> dict:
        frames = self._frames(task_id)
        return {"frames": [{"name": f["name"], "width": f["width"], "height": f["height"]} for f in frames]}

    def frame_size(self, task_id: int, frame: int) -> tuple[int, int]:
        frames = self._frames(task_id)
        if not 0 <= frame < len(frames):
            raise NotFound(f"task {task_id} has no frame {frame}")
        return frames[frame]["width"], frames[frame]["height"]

    def frame_bytes(self, task_id: int, frame: int) -> bytes:
        task = self.get_task(task_id)
        if not 0 <= frame < task["size"] or not task["data_chunk_size"]:
            raise NotFound(f"task {task_id} has no frame {frame}")
        if self._chunks is None or not task["chunks_of_images"]:
            return self.cvat.frame(task_id, frame)
        number, index = divmod(frame, task["data_chunk_size"])
        data = self._chunks.start(task_id, number).member(index)
        if data is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        return data

    def frames_bytes(self, task_id: int, frames: list[int]) -> dict[int, bytes]:
        return {frame: self.frame_bytes(task_id, frame) for frame in frames}

    def task_labels(self, task_id: int) -> tuple[TaskLabel, ...]:
        def task_label(label: dict) -> TaskLabel:
            return TaskLabel(label["id"], label["name"], label.get("type") or "any",
                             tuple(TaskAttribute(a["id"], a["name"], a["input_type"], tuple(a["values"]))
                                   for a in label.get("attributes", [])),
                             tuple(task_label(sublabel) for sublabel in label.get("sublabels", [])))

        labels = self._remember(("labels", task_id), lambda: self.cvat.labels(task_id))
        return tuple(task_label(label) for label in labels if not label.get("parent_id"))

    def rectangles(self, task_id: int, frames: list[int]) -> dict[int, list[dict]]:
        """ReID's boxes. CVAT serves a task's annotations only whole, so they are read once for a
        while (every frame pair asks); the linking at the end reads them afresh."""
        wanted = set(frames)
        by_frame: dict[int, list[dict]] = {}
        for shape in self._remember(("annotations", task_id), lambda: self.cvat.annotations(task_id))["shapes"]:
            if shape["type"] == "rectangle" and shape["frame"] in wanted:
                by_frame.setdefault(shape["frame"], []).append(shape)
        return by_frame

    # Runs and their writes

    def begin_run(self, request_id: str, run: str, task_id: int, job_id: int | None = None,
                  cleanup: bool = False) -> None:
        """Make ``run`` the request's run (earlier runs of the id write nothing from now on) and, for
        ``cleanup``, delete the target's annotations in CVAT now, before any chunk writes: CVAT's
        own way, at the start of the run."""
        with self._engine.begin() as connection:
            previous = connection.execute(select(cvat_runs.c.run).where(cvat_runs.c.request_id == request_id)).first()
            connection.execute(upsert(connection, cvat_runs)
                               .values(request_id=request_id, run=run, task_id=task_id, tracks_written=False)
                               .on_conflict_do_update(index_elements=[cvat_runs.c.request_id],
                                                      set_={"run": run, "task_id": task_id, "tracks_written": False}))
            if previous is not None:
                connection.execute(delete(cvat_frames).where(cvat_frames.c.run == previous.run))
        if cleanup:
            self.cvat.delete_annotations(task_id, job_id)

    def written_frames(self, request_id: str, run: str) -> set[int]:
        """The frames ``run`` has written to CVAT (staged frames not yet known to be there excluded)."""
        with self._engine.begin() as connection:
            return set(connection.execute(
                select(cvat_frames.c.frame).join(cvat_runs, cvat_runs.c.run == cvat_frames.c.run)
                .where(cvat_runs.c.request_id == request_id, cvat_frames.c.run == run,
                       cvat_frames.c.written.is_(True))).scalars())

    def write_results(self, request_id: str, run: str, task_id: int,
                      results: dict[int, tuple[list[dict], list[dict]]], cleanup_frames: list[int] | None,
                      attempt: tuple[str, int] | None = None) -> bool:
        """Stage, then write to CVAT the frames not there yet (see the module's docstring). Cleanup
        already happened in ``begin_run``; returns False, as no write here cleans. ``attempt`` is
        not needed: a frame staged once is written to CVAT once, whichever attempt staged it."""
        if not results:
            return False
        frames = sorted(results)
        with self._engine.begin() as connection:
            hold_run(connection, cvat_runs, request_id, run)
            staged_before = set(connection.execute(select(cvat_frames.c.frame).where(
                cvat_frames.c.run == run, cvat_frames.c.frame.in_(frames))).scalars())
            fresh = [{"run": run, "frame": frame, "written": False,
                      "content": {"tags": results[frame][0], "shapes": results[frame][1]}}
                     for frame in frames if frame not in staged_before]
            if fresh:
                connection.execute(insert(cvat_frames), fresh)
        deadline = time.monotonic() + WRITE_PATIENCE
        pause = 1.0
        while True:
            try:
                self._write_staged(request_id, run, task_id, frames, staged_before)
                return False
            except CvatUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 30.0)
                # Whatever this attempt sent may have been applied, or may still be: look first.
                staged_before = set(frames)

    def _write_staged(self, request_id: str, run: str, task_id: int, frames: list[int], uncertain: set[int]) -> None:
        """One PATCH per job (CVAT's task-wide PATCH passes through every job of the task), each
        recorded as written in the transaction that holds the run's row, where what is still
        pending is read."""
        if uncertain:
            self._settle()
        for job_id, job_frames in self._by_job(task_id, frames).items():
            with self._engine.begin() as connection:
                hold_run(connection, cvat_runs, request_id, run)  # held until the write is recorded
                pending = {row.frame: row.content for row in connection.execute(select(cvat_frames).where(
                    cvat_frames.c.run == run, cvat_frames.c.frame.in_(job_frames),
                    cvat_frames.c.written.is_(False)))}
                to_check = {frame: content for frame, content in pending.items() if frame in uncertain}
                if to_check:
                    present = self._already_in_cvat(task_id, job_id, to_check)
                    pending = {frame: content for frame, content in pending.items() if frame not in present}
                    self._mark_written(connection, run, present)
                if pending:
                    self.cvat.create_annotations(task_id, job_id, {
                        "version": 0, "tracks": [],
                        "tags": [tag for frame in sorted(pending) for tag in pending[frame]["tags"]],
                        "shapes": [shape for frame in sorted(pending) for shape in pending[frame]["shapes"]]})
                    self._mark_written(connection, run, set(pending))

    def _settle(self) -> None:
        """Before looking for an earlier attempt's frames in CVAT: wait until CVAT answers, then as
        long again as a call may take, so that a write CVAT still held (stalled, queued, restarting)
        has landed before we look, rather than after we wrote again."""
        self.cvat.about()
        time.sleep(self.cvat.timeout)

    def _by_job(self, task_id: int, frames: list[int]) -> dict[int, list[int]]:
        """Frames grouped by the annotation job that holds them (the first, where jobs overlap)."""
        jobs = self._remember(("jobs", task_id), lambda: self._annotation_jobs(task_id))
        meta = self._meta(task_id)
        start, step = meta["start_frame"], _step(meta["frame_filter"])
        grouped: dict[int, list[int]] = {}
        for frame in frames:
            number = start + frame * step  # jobs' bounds are in the data's frame numbers
            job = next((job for job in jobs if job["start_frame"] <= number <= job["stop_frame"]), None)
            if job is None:
                raise NotFound(f"task {task_id}: no annotation job holds frame {frame}")
            grouped.setdefault(job["id"], []).append(frame)
        return grouped

    def _annotation_jobs(self, task_id: int) -> list[dict]:
        return sorted((job for job in self.cvat.jobs(task_id) if job.get("type", "annotation") == "annotation"),
                      key=lambda job: job["start_frame"])

    @staticmethod
    def _mark_written(connection, run: str, frames: set[int]) -> None:
        if frames:
            connection.execute(update(cvat_frames).where(cvat_frames.c.run == run,
                                                         cvat_frames.c.frame.in_(sorted(frames))).values(written=True))

    def _already_in_cvat(self, task_id: int, job_id: int, staged: dict[int, dict]) -> set[int]:
        """The staged frames whose tags and shapes are all in the job already."""
        wanted = set(staged)
        there: dict[int, Counter] = {frame: Counter() for frame in wanted}
        current = self.cvat.annotations(task_id, job_id)
        for kind in ("tags", "shapes"):
            for item in current[kind]:
                if item["frame"] in wanted:
                    there[item["frame"]][fingerprint(kind, item)] += 1
        present = set()
        for frame, content in staged.items():
            needed = Counter(fingerprint(kind, item) for kind in ("tags", "shapes") for item in content[kind])
            if not needed - there[frame]:
                present.add(frame)
        return present

    def replace_with_tracks(self, request_id: str, run: str, task_id: int, frames: list[int], link,
                            job_id: int | None = None) -> bool:
        """ReID: the target's rectangles on ``frames`` replaced by the tracks ``link`` makes of them,
        in one PUT of the target's annotations (idempotent: a second PUT after a lost answer finds no
        rectangles left to link and puts the same annotations again)."""
        with self._engine.begin() as connection:
            if hold_run(connection, cvat_runs, request_id, run).tracks_written:
                return False
            current = self.cvat.annotations(task_id, job_id)
            wanted = set(frames)
            rectangles: dict[int, list[dict]] = {}
            kept = []
            for shape in current["shapes"]:
                if shape["type"] == "rectangle" and shape["frame"] in wanted:
                    rectangles.setdefault(shape["frame"], []).append(shape)
                else:
                    kept.append(shape)
            tracks = link(rectangles)
            self.cvat.put_annotations(task_id, job_id, {
                "version": 0, "tags": current["tags"], "shapes": kept, "tracks": current["tracks"] + tracks})
            connection.execute(update(cvat_runs).where(cvat_runs.c.request_id == request_id)
                               .values(tracks_written=True))
        return True


def fingerprint(kind: str, item: dict) -> str:
    """What identifies one of our items among CVAT's, whatever ids and defaults CVAT added: its frame,
    label, type, geometry (to 2 decimals, as CVAT may store floats otherwise) and attributes."""
    def geometry(shape: dict) -> list:
        return [shape.get("type"), [round(float(v), 2) for v in shape.get("points") or []],
                round(float(shape.get("rotation") or 0), 2),
                sorted((a["spec_id"], a["value"]) for a in shape.get("attributes") or []),
                sorted((e["label_id"], geometry(e)) for e in shape.get("elements") or [])]

    body = [kind, item["frame"], item["label_id"]] + (geometry(item) if kind == "shapes" else
                                                      [sorted((a["spec_id"], a["value"])
                                                              for a in item.get("attributes") or [])])
    return json.dumps(body)


def _step(frame_filter: str) -> int:
    """CVAT's frame filter is ``step=N`` or empty."""
    for part in (frame_filter or "").split(","):
        name, _, value = part.partition("=")
        if name.strip() == "step" and value.strip().isdigit():
            return max(int(value), 1)
    return 1


class _ChunkStreams:
    """CVAT's original-quality chunks, streamed: a ZIP's members in frame order, each usable as soon
    as it has arrived (``stream_unzip`` reads a ZIP front to back, where ``zipfile`` needs its end
    first). A few chunks are kept per process; a broken download starts again, skipping what came."""

    def __init__(self, client: CvatClient):
        self.client = client
        self._streams: OrderedDict[tuple[int, int], _ChunkStream] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="cvat-chunks")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start(self, task_id: int, number: int) -> _ChunkStream:
        with self._lock:
            stream = self._streams.get((task_id, number))
            if stream is None or stream.failed:
                stream = _ChunkStream()
                self._streams[(task_id, number)] = stream
                self._pool.submit(self._download, task_id, number, stream)
            self._streams.move_to_end((task_id, number))
            while len(self._streams) > CACHED_CHUNKS:
                self._streams.popitem(last=False)
            return stream

    def _download(self, task_id: int, number: int, stream: _ChunkStream) -> None:
        try:
            self._receive(task_id, number, stream)
        except Exception as error:  # noqa: BLE001 - whoever waits for a member gets it
            stream.end(error)
        else:
            stream.end()

    def _receive(self, task_id: int, number: int, stream: _ChunkStream) -> None:
        deadline, pause = time.monotonic() + READ_PATIENCE, 0.5
        while True:
            try:
                for index, (_name, _size, pieces) in enumerate(stream_unzip(
                        self.client.stream_chunk(task_id, number))):
                    data = b"".join(pieces)
                    if index >= stream.count:  # a restarted download skips what came before
                        stream.add(data)
                return
            except NotStreamUnzippable:  # sizes only after the members' data: read the ZIP whole
                with zipfile.ZipFile(io.BytesIO(self.client.chunk(task_id, number))) as archive:
                    for index, member in enumerate(archive.infolist()):
                        if index >= stream.count:
                            stream.add(archive.read(member))
                return
            except (CvatUnavailable, UnzipError, httpx.HTTPError):
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 15.0)


class _ChunkStream:
    """One chunk's members as they arrive, and how its download ended."""

    def __init__(self):
        self._members: list[bytes] = []
        self._ended = False
        self._error: Exception | None = None
        self._arrived = threading.Condition()

    @property
    def count(self) -> int:
        return len(self._members)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def add(self, data: bytes) -> None:
        with self._arrived:
            self._members.append(data)
            self._arrived.notify_all()

    def end(self, error: Exception | None = None) -> None:
        with self._arrived:
            self._ended, self._error = True, error
            self._arrived.notify_all()

    def member(self, index: int) -> bytes | None:
        """The index-th member (None if the chunk has fewer), once it has arrived."""
        with self._arrived:
            self._arrived.wait_for(lambda: index < len(self._members) or self._ended)
            if index < len(self._members):
                return self._members[index]
            if self._error is not None:
                raise self._error
            return None
