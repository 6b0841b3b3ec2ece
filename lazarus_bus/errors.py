"""One exception per exit code, so the CLI and the gateway map failures the same way."""

from __future__ import annotations

__all__ = [
    "LazarusError",
    "MalformedInput",
    "NotFound",
    "Refused",
    "Conflict",
    "Forbidden",
    "TooLarge",
    "Fenced",
    "EffectDone",
    "InDoubt",
    "BudgetExceeded",
    "CorruptLog",
]


class LazarusError(Exception):
    """Any failure a user should see as one line; exit 1 unless a subclass says otherwise."""

    exit_code = 1
    http_status = 500


class MalformedInput(LazarusError):
    """Usage, bad names, malformed JSON, unknown types, wrong field types."""

    exit_code = 2
    http_status = 422


class NotFound(LazarusError):
    """A cell, agent, checkpoint, handoff or approval key that does not exist."""

    exit_code = 3
    http_status = 404


class Refused(LazarusError):
    """Refused by state or rules: transitions, permissions, isolation, path escapes."""

    exit_code = 4
    http_status = 409


class Forbidden(Refused):
    """A role or identity that lacks the capability it asked for."""

    http_status = 403


class Conflict(Refused):
    """An expected seq or an event id that disagrees with the log."""

    http_status = 409


class Fenced(Refused):
    """An event from an agent process its newer incarnation superseded: a stale copy may not write."""

    def __init__(self, message: str) -> None:
        super().__init__(f"fenced: {message}")


class EffectDone(Conflict):
    """A start of an effect that already completed: refused, and answered with the recorded result."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class InDoubt(Refused):
    """An effect was started by an incarnation that is gone, with no outcome: it may or may not have
    happened, and running it again blind could do it twice."""

    def __init__(self, message: str, effect_id: str = "") -> None:
        super().__init__(f"in doubt: {message}")
        self.effect_id = effect_id


class BudgetExceeded(Refused):
    """Spending more would cross (or has crossed) a cap: fail closed, before the call."""


class TooLarge(Refused):
    """An event or archive over its configured size limit."""

    http_status = 413


class CorruptLog(LazarusError):
    """A line in the middle of a log that breaks JSON, schema, seq order or the hash chain."""

    exit_code = 5
    http_status = 500
