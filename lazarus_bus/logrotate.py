"""An agent's captured output, `logs/agents/<agent>.log`: written with rotation, read back by `lazarus logs`.

Rotation is by size, like logrotate's `size`: when a write would take the file past `max_bytes`, the
file becomes `<agent>.log.1` (older ones shift to `.2` ... `.keep`, the oldest is dropped) and a new
file is begun. Writes are split at line ends; only a line longer than `max_bytes` is cut."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RotatingLog", "follow_lines", "last_lines", "rotated_paths"]


class RotatingLog:
    """An append-only file descriptor that rotates itself at `max_bytes`, keeping `keep` old files."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, data: bytes) -> None:
        """Append `data`, split at line ends so that no file passes `max_bytes` (0 = never rotate); only a
        line longer than `max_bytes` is cut."""
        while data:
            room = self.max_bytes - self.size if self.max_bytes else len(data)
            if len(data) <= room:
                part = data
            else:
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1
                if not cut and self.size:
                    self.rotate()
                    continue
                part = data[:cut or self.max_bytes]
            os.write(self.fd, part)
            self.size += len(part)
            data = data[len(part):]

    def rotate(self) -> None:
        """`.log` -> `.log.1` -> ... -> `.log.<keep>`; with keep = 0 the old output is dropped."""
        os.close(self.fd)
        if self.keep == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            for n in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, f"{self.path}.1")
        self.fd = self._open()
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def rotated_paths(path: Path) -> list[Path]:
    """The log and its rotated files that exist, oldest first."""
    numbered = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1:]
        if suffix.isdigit():
            numbered.append((int(suffix), p))
    files = [p for _, p in sorted(numbered, reverse=True)]
    return files + ([path] if path.exists() else [])


def last_lines(path: Path, n: int | None) -> list[bytes]:
    """The last `n` lines (all with None) of the captured output, reaching into rotated files when needed."""
    lines: list[bytes] = []
    for p in reversed(rotated_paths(path)):
        try:
            chunk = p.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:  # rotated away while reading
            continue
        lines = chunk + lines
        if n is None:
            continue
        if len(lines) >= n:
            break
    if n is None:
        return lines
    return lines[-n:] if n else []


def follow_lines(path: Path, poll: float = 0.2) -> Iterator[bytes]:
    """What is appended to the log from now on, across rotations (a new file is read from its start)."""
    fh = None
    ino = None
    first = True
    try:
        while True:
            if fh is None:
                try:
                    fh = path.open("rb")
                except FileNotFoundError:
                    first = False  # a file that appears later is read whole
                    time.sleep(poll)
                    continue
                ino = os.fstat(fh.fileno()).st_ino
                if first:
                    fh.seek(0, os.SEEK_END)
                first = False
            data = fh.read()
            if data:
                yield data
                continue
            try:
                now: int | None = os.stat(path).st_ino
            except FileNotFoundError:
                now = None
            if now != ino:  # rotated: finish the old file, then start on the new one
                rest = fh.read()
                if rest:
                    yield rest
                fh.close()
                fh = None
                continue
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()
