"""Secret values are read at spawn and masked wherever lazarus copies an agent's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazarus_bus.errors import LazarusError, MalformedInput
from lazarus_bus.secrets import Masker, mask, read_secrets, secret_source


def test_sources_are_files_or_daemon_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k").write_text("v1\n")
    monkeypatch.setenv("LZ_SECRET_TEST", "v2")
    assert read_secrets({"A": f"@{tmp_path / 'k'}", "B": "env:LZ_SECRET_TEST"}) == {"A": "v1", "B": "v2"}
    with pytest.raises(LazarusError, match="secret C"):
        read_secrets({"C": f"@{tmp_path / 'missing'}"})
    with pytest.raises(LazarusError, match=r"\$LZ_NOT_SET"):
        read_secrets({"D": "env:LZ_NOT_SET"})
    with pytest.raises(MalformedInput):
        secret_source("plain-value")
    assert secret_source("@rel/key").startswith("@/")


def test_a_value_split_across_chunks_is_masked_whole() -> None:
    m = Masker(["hunter22", "hunter2222"])
    out = b"".join(m.feed(c) for c in (b"pw=hun", b"ter2", b"2 and hunter2222!", b" ok hunt")) + m.flush()
    assert out == b"pw=*** and ***! ok hunt"
    assert mask("a hunter22 b", ["hunter22"]) == "a *** b"
    quiet = Masker(["secret"])
    assert quiet.feed(b"plain line\n") == b"plain line\n"  # nothing held back that could not begin a secret
