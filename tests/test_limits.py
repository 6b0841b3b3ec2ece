"""Limits are parsed strictly and become the rlimits that enforce them (no cgroups needed)."""

from __future__ import annotations

import resource

import pytest

from lazarus_bus.errors import MalformedInput
from lazarus_bus.limits import describe, parse_limit, rlimits, size_bytes


def test_sizes_and_kinds_are_checked() -> None:
    assert size_bytes("64M") == 64 << 20 and size_bytes("2g") == 2 << 30 and size_bytes("512MB") == 512 << 20
    assert parse_limit("cpu=1.5") == ("cpu", "1.5") and parse_limit(" pids = 16 ") == ("pids", "16")
    for bad in ("memory=lots", "memory=0", "cpu=-1", "pids=1.5", "nofile=", "disk=1G", "memory"):
        with pytest.raises(MalformedInput):
            parse_limit(bad)


def test_rlimits_say_what_they_cannot_enforce() -> None:
    calls, left = rlimits({"memory": "64M", "pids": "32", "nofile": "256", "cpu": "1"})
    assert [(c.resource, c.value) for c in calls] == [(resource.RLIMIT_AS, 64 << 20), (resource.RLIMIT_NPROC, 32),
                                                      (resource.RLIMIT_NOFILE, 256)]
    assert left == ["cpu"]
    assert describe({"nofile": "256", "memory": "64M", "via": "prlimit"}) == "memory=64M nofile=256"
