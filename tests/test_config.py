"""Config: the documented file equals the defaults; errors name the key; the search order holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazarus_bus import Config, MalformedInput, load_config, resolve

REPO = Path(__file__).parent.parent


def test_documented_config_is_the_defaults() -> None:
    assert load_config(REPO / "config" / "lazarus.toml") == Config()


@pytest.mark.parametrize(
    "text, words",
    [
        ("[health]\nstal_after = 3\n", "unknown field `stal_after`"),
        ("[health]\nstale_after = 'soon'\n", "$.health.stale_after"),
        ("fsync = 'sometimes'\n", "$.fsync"),
        ("[resurrection.agents.ezra]\nmood = 'ask'\n", "mood"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(MalformedInput) as info:
        load_config(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_layers_parse(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[resurrection.missions.forge]\nmode = 'yes'\n[resurrection.agents.ezra]\nmode = 'ask'\n"
                    "mission = 'archive'\ndead_after = 900\n")
    cfg = load_config(path)
    assert cfg.resurrection.missions["forge"].mode == "yes"
    assert cfg.resurrection.agents["ezra"].dead_after == 900


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LAZARUS_ROOT", "LAZARUS_CONFIG", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    named = tmp_path / "named.toml"
    named.write_text(f"missions_root = '{tmp_path / 'from-config'}'\nfsync = 'never'\n")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve()[0] == tmp_path / "xdg" / "lazarus" / "missions"
    assert resolve(config_path=str(named)) == (tmp_path / "from-config", Config(
        missions_root=str(tmp_path / "from-config"), fsync="never"))
    monkeypatch.setenv("LAZARUS_CONFIG", str(named))
    assert resolve()[0] == tmp_path / "from-config"
    monkeypatch.setenv("LAZARUS_ROOT", str(tmp_path / "env-root"))
    assert resolve()[0] == tmp_path / "env-root"
    assert resolve(root=str(tmp_path / "flag"))[0] == tmp_path / "flag"
    monkeypatch.delenv("LAZARUS_CONFIG")
    (tmp_path / "flag").mkdir()
    (tmp_path / "flag" / "lazarus.toml").write_text("[daemon]\ntick = 0.5\n")
    assert resolve(root=str(tmp_path / "flag"))[1].daemon.tick == 0.5


def test_policy_examples_are_a_valid_config() -> None:
    from lazarus_bus.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "config" / "policy-examples.toml")
    assert cfg.resurrection.missions["forge"].mode == "yes"
    assert cfg.resurrection.agents["ezra"].mission == "archive"
