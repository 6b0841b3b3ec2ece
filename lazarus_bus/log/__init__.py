"""Log backends behind one small interface; the JSONL file is the embedded default."""

from .base import Admit, Appended, Head, LogBackend
from .commit import Durable
from .file import FileLog

__all__ = ["Admit", "Appended", "Durable", "Head", "LogBackend", "FileLog"]
