"""One contract suite, every backend: the JSONL file and NATS JetStream keep the same guarantees."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazarus_bus import FileLog, LogBackend
from lazarus_bus.log.nats import Nats, NatsLog
from tests.conftest import NatsServer
from tests.log_contract import LogContract, MakeLog


@pytest.fixture(params=["file", "nats"])
def make_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLog]:
    opened: list[LogBackend] = []
    cell = f"c{uuid.uuid4().hex[:12]}"
    if request.param == "nats":
        server: NatsServer = request.getfixturevalue("nats_server")
        conn = Nats.get(server.url, "CONTRACT")

    def make(reopen: LogBackend | None = None, **settings: object) -> LogBackend:
        if request.param == "file":
            (tmp_path / "logs").mkdir(exist_ok=True)
            settings.setdefault("fsync", "never")
            log: LogBackend = FileLog(tmp_path / "logs" / "events.jsonl", cell, create=True, **settings)  # type: ignore[arg-type]
        else:
            log = NatsLog(conn, cell, **settings)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


class TestContract(LogContract):
    pass
