"""The task's frames in the local store: images uploaded (kept as the bytes sent, never re-encoded)
or read where they are under the server files root; their sizes are stored when they are added, so
that a region (``roi``) or a page of frame metadata needs no decoding.

``FrameFiles`` is one of the parts ``Store`` is made of: it reads and writes through the store's
engine, ``data_dir``, ``server_files`` and ``max_image_pixels``.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePath

from sqlalchemy import Engine, insert, select

from dispatcher.store.errors import InvalidInput, NotFound
from dispatcher.store.rows import task_row, task_size, touch, update_jobs
from dispatcher.store.server_files import ServerFiles
from dispatcher.store.tables import annotations, frames
from dispatcher.store.validation import image_size


class FrameFiles:
    _engine: Engine
    data_dir: Path
    server_files: ServerFiles
    max_image_pixels: int

    def add_frames(self, task_id: int, files: list[tuple[str, bytes]]) -> None:
        """Append uploaded images, in the order given."""
        if not isinstance(files, list) or not files:
            raise InvalidInput("files: at least one image is required")
        new_frames = []
        for index, (name, data) in enumerate(files):
            if not isinstance(name, str) or not name:
                raise InvalidInput(f"files[{index}]: the file name must be a non-empty string")
            width, height, image_format = image_size(data, f"files[{index}] ({name!r})", self.max_image_pixels)
            suffix = PurePath(name).suffix.lower()
            if not suffix[1:].isalnum():  # no or odd extension: name the file after its format
                suffix = "." + image_format.lower()
            new_frames.append({"name": name, "width": width, "height": height, "server_file": False,
                               "data": data, "suffix": suffix})
        self._append_frames(task_id, new_frames, "files")

    def add_server_files(self, task_id: int, paths: list[str]) -> None:
        """Append images under the server files root, named by their paths relative to it ('..'
        folded). They are read where they are, never copied."""
        if not isinstance(paths, list) or not paths:
            raise InvalidInput("paths: at least one path is required")
        new_frames = []
        for index, path in enumerate(paths):
            where = f"paths[{index}] ({path!r})"
            resolved, relative = self.server_files.resolve(path, where)
            width, height, _ = image_size(self.server_files.read(resolved, where), where, self.max_image_pixels)
            new_frames.append({"name": posixpath.normpath(path), "width": width, "height": height,
                               "server_file": True, "path": relative})
        self._append_frames(task_id, new_frames, "paths")

    def _task_dir(self, task_id: int) -> Path:
        return self.data_dir / "tasks" / str(task_id)

    def _append_frames(self, task_id: int, new_frames: list[dict], field: str) -> None:
        written: list[Path] = []
        try:
            with self._engine.begin() as connection:
                # The row lock serialises appends to one task (SQLite's BEGIN IMMEDIATE already does).
                task = task_row(connection, task_id, for_update=True)
                annotated = select(annotations.c.id).where(annotations.c.task_id == task_id).limit(1)
                if connection.execute(annotated).first():
                    raise InvalidInput(f"{field}: task {task_id} already has annotations; "
                                       "frames can only be added before annotating")
                first = task_size(connection, task_id)
                rows = []
                for frame, new in enumerate(new_frames, first):
                    path = new.get("path")
                    if not new["server_file"]:
                        file = self._task_dir(task_id) / "frames" / f"{frame}{new['suffix']}"
                        file.parent.mkdir(parents=True, exist_ok=True)
                        file.write_bytes(new["data"])
                        written.append(file)
                        path = file.relative_to(self.data_dir).as_posix()
                    rows.append({"task_id": task_id, "frame": frame, "name": new["name"], "width": new["width"],
                                 "height": new["height"], "path": path, "server_file": new["server_file"]})
                connection.execute(insert(frames), rows)
                update_jobs(connection, task_id, first + len(rows), task.segment_size)
                touch(connection, task_id, frames=True)
        except BaseException:
            for file in written:
                file.unlink(missing_ok=True)
            raise

    def prepare(self, task_id: int, frames: list[int]) -> None:
        """Nothing to fetch ahead: every frame is a file of its own here."""

    def frames_per_read(self, task_id: int) -> int:
        """One: frames are read one file at a time, so chunks are planned by CHUNK_SIZE alone."""
        return 1

    def frame_bytes(self, task_id: int, frame: int) -> bytes:
        """The frame's file as it was uploaded (or as it is on the server)."""
        return self.frames_bytes(task_id, [frame])[frame]

    def frames_bytes(self, task_id: int, wanted: list[int]) -> dict[int, bytes]:
        """``frame_bytes`` of several frames (a batch's), their rows read in one query. A server
        file is checked as it is opened (``ServerFiles.read_under_root``): a few system calls,
        where resolving its path anew took a third of a millisecond per frame."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            rows = {row.frame: row for row in connection.execute(
                select(frames.c.frame, frames.c.path, frames.c.server_file)
                .where(frames.c.task_id == task_id, frames.c.frame.in_(wanted)))}
        missing = [frame for frame in wanted if frame not in rows]
        if missing:
            raise NotFound(f"task {task_id} has no frame {missing[0]}")
        content = {}
        for frame in wanted:
            row = rows[frame]
            if not row.server_file:
                content[frame] = (self.data_dir / row.path).read_bytes()
                continue
            try:
                content[frame] = self.server_files.read_under_root(row.path, f"frame {frame}")
            except InvalidInput as error:
                raise NotFound(f"task {task_id}: {error}") from None
        return content

    def frame_files(self, task_id: int, first: int, last: int) -> list[tuple[int, str, Path]]:
        """``(frame, name, file)`` of the task's frames ``first..last`` that exist, in frame order:
        the upload as it was stored, or the server file where it is (its path checked again: the
        root or a link may have changed since the file was added)."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            rows = connection.execute(
                select(frames.c.frame, frames.c.name, frames.c.path, frames.c.server_file)
                .where(frames.c.task_id == task_id, frames.c.frame >= first, frames.c.frame <= last)
                .order_by(frames.c.frame)).all()
        files = []
        for row in rows:
            if not row.server_file:
                files.append((row.frame, row.name, self.data_dir / row.path))
                continue
            try:
                files.append((row.frame, row.name, self.server_files.resolve(row.path, f"frame {row.frame}")[0]))
            except InvalidInput as error:
                raise NotFound(f"task {task_id}: {error}") from None
        return files

    def frame_size(self, task_id: int, frame: int) -> tuple[int, int]:
        """A frame's width and height as stored (EXIF orientation applied), without decoding it."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            row = connection.execute(select(frames.c.width, frames.c.height)
                                     .where(frames.c.task_id == task_id, frames.c.frame == frame)).first()
        if row is None:
            raise NotFound(f"task {task_id} has no frame {frame}")
        return row.width, row.height

    def frames_meta(self, task_id: int) -> dict:
        """The frame list in the shape of CVAT's ``/api/tasks/<id>/data/meta``."""
        with self._engine.begin() as connection:
            task_row(connection, task_id)
            rows = connection.execute(select(frames.c.name, frames.c.width, frames.c.height)
                                      .where(frames.c.task_id == task_id).order_by(frames.c.frame)).all()
        return {"size": len(rows), "start_frame": 0, "stop_frame": len(rows) - 1, "frame_filter": "",
                "deleted_frames": [],
                "frames": [{"name": row.name, "width": row.width, "height": row.height} for row in rows]}
