"""Files under the server files root (``SERVER_FILES_ROOT``): tasks may take frames from there by
path, read where they are, and clients list its folders as CVAT's ``/api/server/share`` does.
Nothing that resolves outside the root (``..``, links) is ever read or listed. A path that cannot be
resolved or read (a loop of links, a NUL, a name too long, no permission) is refused with the
system's reason, and no message names anything outside the root, the root's own path included."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePath

from dispatcher.store.errors import InvalidInput, NotFound

# What server-file listings call an image (Pillow opens more; these are what people keep photos in).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class ServerFiles:
    def __init__(self, root: Path | None):
        self.root = None if root is None else Path(root).resolve()

    def resolve(self, path: str, where: str) -> tuple[Path, str]:
        """The file ``path`` names under the server files root, and its path relative to the root
        with links and '..' resolved; refuses anything that resolves outside the root."""
        if self.root is None:
            raise InvalidInput(f"{where}: server files are disabled (SERVER_FILES_ROOT is not set)")
        if not isinstance(path, str) or not path:
            raise InvalidInput(f"{where}: must be a non-empty path")
        if PurePath(path).is_absolute():
            raise InvalidInput(f"{where}: must be relative to the server files root")
        resolved = self._resolved(path, where)
        if not resolved.is_relative_to(self.root):
            raise InvalidInput(f"{where}: resolves outside the server files root")
        if not resolved.is_file():
            raise InvalidInput(f"{where}: no such file under the server files root")
        return resolved, resolved.relative_to(self.root).as_posix()

    def read(self, resolved: Path, where: str) -> bytes:
        """The content of a file ``resolve`` gave."""
        try:
            return resolved.read_bytes()
        except OSError as error:
            raise InvalidInput(f"{where}: cannot be read ({_reason(error)})") from None

    def read_under_root(self, relative: str, where: str) -> bytes:
        """The content of the file ``relative`` names, checked after it is opened: the open file's
        own path (Linux's ``/proc/self/fd``) must lie under the root, so no link changed in between
        can lead outside it. Where ``/proc`` is missing, the path is resolved first instead."""
        if self.root is None:
            raise InvalidInput(f"{where}: server files are disabled (SERVER_FILES_ROOT is not set)")
        try:
            descriptor = os.open(self.root / relative, os.O_RDONLY)
        except (OSError, ValueError) as error:
            raise InvalidInput(f"{where}: cannot be read ({_reason(error)})") from None
        with os.fdopen(descriptor, "rb") as stream:
            try:
                opened = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
            except OSError:
                opened = self.resolve(relative, where)[0]
            if not opened.is_relative_to(self.root) or not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise InvalidInput(f"{where}: no such file under the server files root")
            try:
                return stream.read()
            except OSError as error:
                raise InvalidInput(f"{where}: cannot be read ({_reason(error)})") from None

    def _resolved(self, relative: str, where: str) -> Path:
        try:
            resolved = (self.root / relative).resolve()
            resolved.exists()  # raises what is_file() and is_dir() would: a name too long, no permission
            return resolved
        except (OSError, RuntimeError, ValueError) as error:
            raise InvalidInput(f"{where}: cannot be resolved under the server files root ({_reason(error)})") from None

    def listing(self, directory: str) -> list[dict]:
        """One folder under the server files root in the shape of CVAT's ``/api/server/share``:
        ``{name, type: DIR|REG, mime_type}``, folders first; entries whose links lead outside the
        root are left out."""
        if self.root is None:
            raise InvalidInput("directory: server files are disabled (SERVER_FILES_ROOT is not set)")
        relative = directory.strip("/")
        if PurePath(relative).is_absolute() or ".." in PurePath(relative).parts:
            raise InvalidInput(f"directory: must be a folder under the server files root, got {directory!r}")
        folder = self._resolved(relative, "directory")
        if not folder.is_relative_to(self.root) or not folder.is_dir():
            raise NotFound(f"directory: no folder {directory!r} under the server files root")
        try:
            names = sorted(entry.name for entry in folder.iterdir())
        except OSError as error:
            raise InvalidInput(f"directory: {directory!r} cannot be listed ({_reason(error)})") from None
        entries = []
        for name in names:
            entry = folder / name
            try:
                name.encode()  # a name that is not UTF-8 could be neither shown in JSON nor asked for
                resolved = entry.resolve()
            except (OSError, RuntimeError, UnicodeError):  # a loop of links, say: nothing to read there
                continue
            if not resolved.is_relative_to(self.root) or not (resolved.is_dir() or resolved.is_file()):
                continue
            if resolved.is_dir():
                entries.append({"name": entry.name, "type": "DIR", "mime_type": "DIR"})
            else:
                kind = "image" if entry.suffix.lower() in IMAGE_SUFFIXES else "unknown"
                entries.append({"name": entry.name, "type": "REG", "mime_type": kind})
        return sorted(entries, key=lambda entry: (entry["type"] != "DIR", entry["name"]))


def _reason(error: Exception) -> str:
    """Why a path failed, without the path: the system's words (its messages name the whole path)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, RuntimeError):  # Python 3.11's resolve() on a loop of links
        return "a loop of symbolic links"
    return str(error) if isinstance(error, ValueError) else type(error).__name__
