"""Secrets of an agent (DESIGN section 15): the log holds a name and a source, never a value.

A source is `@FILE` (an absolute path, read by the daemon) or `env:VAR` (the daemon's environment).
The value is read at each spawn into the agent's environment, and replaced by `***` wherever lazarus
copies the agent's words: its captured output and the log tails put into a death's detail."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import LazarusError, MalformedInput

__all__ = ["MASK", "Masker", "mask", "read_secrets", "secret_source"]

MASK = b"***"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def secret_source(text: str) -> str:
    """`@FILE` (made absolute, as the daemon may run elsewhere) or `env:VAR`, checked."""
    if text.startswith("@") and len(text) > 1:
        return "@" + str(Path(text[1:]).expanduser().absolute())
    if text.startswith("env:") and _VAR.match(text[4:]):
        return text
    raise MalformedInput(f"a secret's source is @FILE or env:VAR, got {text!r}")


def read_secrets(secrets: Mapping[str, str]) -> dict[str, str]:
    """Each secret's value, read now (a file without its final newline); a source that cannot be read
    is an error naming the secret, never an empty value."""
    out: dict[str, str] = {}
    for name, source in secrets.items():
        if not _NAME.match(name):
            raise MalformedInput(f"secret name {name!r} is not an environment variable name")
        if source.startswith("@"):
            try:
                raw = Path(source[1:]).read_text()
            except OSError as exc:
                raise LazarusError(f"secret {name}: cannot read {source[1:]}: {exc.strerror}") from None
            out[name] = raw[:-1] if raw.endswith("\n") else raw
        elif source.startswith("env:"):
            value = os.environ.get(source[4:])
            if value is None:
                raise LazarusError(f"secret {name}: ${source[4:]} is not set in the daemon's environment")
            out[name] = value
        else:
            raise MalformedInput(f"secret {name}: a source is @FILE or env:VAR, got {source!r}")
    return out


def _needles(values: Iterable[str]) -> list[bytes]:
    # longest first, so a secret that contains another is masked whole
    return sorted({v.encode() for v in values if v}, key=len, reverse=True)


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every secret value replaced by `***`."""
    for needle in _needles(values):
        text = text.replace(needle.decode(), MASK.decode())
    return text


class Masker:
    """Masks secrets in a byte stream read in chunks: a value split between two chunks is held back
    until the next one (or the end) shows whether it is whole."""

    def __init__(self, values: Iterable[str]) -> None:
        self.needles = _needles(values)
        self.keep = max((len(n) for n in self.needles), default=1) - 1
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        """What can be written now, masked."""
        data = self.held + chunk
        for needle in self.needles:
            data = data.replace(needle, MASK)
        cut = len(data) - self.keep if self.keep else len(data)
        # hold back only a tail that could begin a secret
        while cut < len(data) and not any(n.startswith(data[cut:]) for n in self.needles):
            cut += 1
        self.held = data[max(cut, 0):]
        return data[:max(cut, 0)]

    def flush(self) -> bytes:
        """The held-back tail, at the end of the stream or when it has gone quiet."""
        out, self.held = self.held, b""
        return out
