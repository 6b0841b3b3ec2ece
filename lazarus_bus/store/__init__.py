"""Stores: where a root's cells live. The file store is the embedded default; NATS spans hosts."""

from pathlib import Path

from ..config import Config
from .base import Store, Wakeup
from .file import FileStore

__all__ = ["FileStore", "Store", "Wakeup", "open_store"]


def open_store(path: Path, config: Config) -> Store:
    """The one place the backend is chosen."""
    if config.backend == "nats":
        from .nats import NatsStore  # nats-py is imported only by roots that use it

        return NatsStore(path, config)
    return FileStore(path, config)
