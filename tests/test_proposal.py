"""Mission proposals (section 17): the seed's Markdown template and TOML make a cell and its invitations;
a malformed proposal is one error naming the section and line, and creates nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazarus_bus import MalformedInput
from lazarus_bus.proposal import parse, parse_duration
from tests.conftest import Cli

EXAMPLES = Path(__file__).parent.parent / "examples"
TEMPLATE = EXAMPLES / "mission-proposal.md"


def test_durations() -> None:
    assert parse_duration("72h") == 259200
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2 days") == 172800
    assert parse_duration("90") == 90
    assert parse_duration("none") == 0
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_the_template_and_its_toml_twin_say_the_same() -> None:
    md = parse(TEMPLATE.name, TEMPLATE.read_text())
    toml = parse("mission-proposal.toml", (EXAMPLES / "mission-proposal.toml").read_text())
    assert md.name == toml.name == "forge-release"
    assert [(a.name, a.role) for a in md.agents] == [(a.name, a.role) for a in toml.agents] == [
        ("ezra", "lead"), ("bezalel", "write"), ("allegro", "write"), ("timmy", "audit")]
    for p in (md, toml):
        assert (p.max_duration, p.checkpoint_interval, p.auto_archive, p.max_attempts, p.isolation) == (
            259200, 1800, True, 3, 1)
    assert len(md.success_criteria) == 3 and md.summary.startswith("Ship release 2.0")


def test_the_seeds_template_creates_the_cell_with_its_agents_and_roles(cli: Cli, root_dir: Path) -> None:
    dry = cli.ok("cell", "create", "--from", str(TEMPLATE), "--dry-run")
    assert "would create cell forge-release" in dry and "would invite ezra as lead" in dry
    assert not list(p for p in root_dir.iterdir() if not p.name.startswith(".") and p.is_dir())  # nothing made
    cell_id = cli.ok("cell", "create", "--from", str(TEMPLATE)).strip()
    shown = json.loads(cli.ok("cell", "show", "forge-release", "--json"))
    assert shown["id"] == cell_id and shown["state"] == "provisioned"
    assert {n: a["role"] for n, a in shown["agents"].items()} == {
        "ezra": "lead", "bezalel": "write", "allegro": "write", "timmy": "audit"}
    assert (shown["max_duration"], shown["checkpoint_interval"], shown["auto_archive"]) == (259200, 1800, True)
    assert shown["policy"]["max_attempts"] == 3  # the proposal's max revive attempts
    assert "Ship release 2.0" in shown["mission"]
    assert (root_dir / cell_id / "artifacts" / "proposal.md").read_text() == TEMPLATE.read_text()
    again = cli("cell", "create", "--from", str(TEMPLATE))
    assert again.code == 4  # the name is taken


def test_the_toml_twin_with_a_name_given(cli: Cli, root_dir: Path) -> None:
    cell_id = cli.ok("cell", "create", "release-b", "--from", str(EXAMPLES / "mission-proposal.toml")).strip()
    shown = json.loads(cli.ok("cell", "show", "release-b", "--json"))
    assert shown["id"] == cell_id and len(shown["agents"]) == 4
    assert (root_dir / cell_id / "artifacts" / "proposal.toml").exists()


@pytest.mark.parametrize(("edit", "section", "line", "words"), [
    (("— write: writes", "— writer: writes"), "Agents invited", 19, "unknown role 'writer'"),
    (("- @allegro — write", "- allegro — write"), "Agents invited", 20, "expected `- @name — role`"),
    (("| 72h   |", "| soon  |"), "Cell configuration", 31, "'soon' is not a duration"),
    (("| Max revive attempts   | 3     |", "| Max revive attempts   | three |"), "Cell configuration", 34,
     "not a whole number"),
    (("| Checkpoint interval   |", "| Checkpoint cadence    |"), "Cell configuration", 32, "unknown setting"),
    (("Level 1:", "Level 7:"), "Isolation requirements", 25, "level 7 does not exist"),
    (("## Success criteria", "## Afterwards"), "Success criteria", 0, "missing"),
])
def test_a_malformed_proposal_is_one_error_naming_section_and_line_and_creates_nothing(
        cli: Cli, root_dir: Path, tmp_path: Path, edit: tuple[str, str], section: str, line: int, words: str) -> None:
    text = TEMPLATE.read_text()
    assert edit[0] in text
    bad = tmp_path / "proposal.md"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    r = cli("cell", "create", "--from", str(bad))
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("error: proposal proposal.md: ")
    assert f"section '{section}'" in r.err and words in r.err
    if line:
        assert f"line {line}:" in r.err
        assert edit[1] in bad.read_text().splitlines()[line - 1]  # the very line that is wrong
    assert not [p for p in root_dir.iterdir() if not p.name.startswith(".") and p.is_dir()]  # nothing created


def test_a_malformed_toml_proposal_is_one_error(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('name = "x"\nsummary = "s"\n[[agents]]\nname = "ezra"\nrole = "boss"\n')
    r = cli("cell", "create", "--from", str(bad))
    assert r.code == 2 and "role" in r.err and len(r.err.strip().splitlines()) == 1
    bad.write_text('name = "x"\nsummary = "s\n')
    r = cli("cell", "create", "--from", str(bad))
    assert r.code == 2 and "line" in r.err
    with pytest.raises(MalformedInput):
        parse("p.toml", 'name = "x"\nsummary = "s"\nagents = []\n')
