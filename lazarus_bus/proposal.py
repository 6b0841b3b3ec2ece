"""Mission proposals (section 17): the Markdown mission-proposal template, or the same fields as TOML, read
into one typed Proposal that `lazarus cell create --from FILE` turns into a cell and its invitations.

A malformed proposal is one MalformedInput naming the section and the line, raised before anything is
created."""

from __future__ import annotations

import re
import tomllib
from typing import Any, Literal

import msgspec
from msgspec import Struct

from .errors import MalformedInput
from .names import AGENT_PATTERN, RESERVED, check_cell_name

__all__ = ["Invite", "Proposal", "parse", "parse_duration", "parse_markdown", "parse_toml"]

ROLES = ("lead", "write", "read", "audit")
Role = Literal["lead", "write", "read", "audit"]


class Invite(Struct, frozen=True, kw_only=True):
    """One agent the proposal invites, with its role and what the proposal says of it."""

    name: str
    role: Role
    note: str = ""


class Proposal(Struct, frozen=True, kw_only=True):
    """Everything a proposal asks for: the cell, its lifetime and its agents."""

    name: str
    summary: str
    objective: str = ""
    agents: list[Invite]
    isolation: Literal[1, 2, 3] = 1
    network: Literal["host", "none"] | None = None
    max_duration: float = 0.0
    checkpoint_interval: float = 0.0
    auto_archive: bool = False
    max_attempts: int | None = None  # the proposal's max revive attempts: the cell policy's max_attempts
    success_criteria: list[str] = []

    @property
    def mission(self) -> str:
        """The cell's mission text: the summary, then the objective."""
        return "\n\n".join(x for x in (self.summary, self.objective) if x)


# -- durations and settings ------------------------------------------------------------------

_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*,?")


def parse_duration(text: str) -> float:
    """`72h`, `30m`, `1h30m`, `2 days`, `90` (seconds), `none`: seconds (0 = none); ValueError otherwise."""
    value = text.strip().lower()
    if value in ("", "none", "-", "no", "off", "unlimited", "n/a"):
        return 0.0
    total, pos = 0.0, 0
    while pos < len(value):
        m = _PART.match(value, pos)
        if m is None or m.end() == pos or m.group(2) not in _UNITS:
            raise ValueError(f"{text.strip()!r} is not a duration (e.g. 90, 30m, 72h, 1h30m, 2d or none)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "y", "1", "enabled", "[x]"):
        return True
    if value in ("no", "false", "off", "n", "0", "disabled", "[ ]", "none", "-"):
        return False
    raise ValueError(f"{text.strip()!r} is not yes or no")


def _count(text: str) -> int:
    value = text.strip()
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


# the rows of the cell-configuration table: normalized key -> (field, parser)
_SETTINGS: dict[str, tuple[str, Any]] = {
    "max duration": ("max_duration", parse_duration),
    "checkpoint interval": ("checkpoint_interval", parse_duration),
    "auto archive on close": ("auto_archive", _flag),
    "auto archive": ("auto_archive", _flag),
    "max revive attempts": ("max_attempts", _count),
    "max attempts": ("max_attempts", _count),
}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.strip().strip("*_`").lower()).strip()


# -- Markdown --------------------------------------------------------------------------------

_SECTIONS = {  # normalized heading -> the section it is
    "summary": "summary", "objective": "objective", "objectives": "objective",
    "agents": "agents", "agents invited": "agents", "invited agents": "agents", "team": "agents",
    "isolation": "isolation", "isolation requirements": "isolation",
    "cell configuration": "config", "configuration": "config", "cell config": "config",
    "success criteria": "success",
}
_TITLES = {"summary": "Summary", "objective": "Objective", "agents": "Agents invited",
           "isolation": "Isolation requirements", "config": "Cell configuration", "success": "Success criteria"}
_REQUIRED = ("summary", "objective", "agents", "config", "success")
_AGENT = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:\[[ xX]\]\s+)?@(\S+?)[:,]?\s+(?:[—–-]{1,2}|:)\s*(\S+)(.*)$")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:\[[ xX]\]\s+)?(.*\S)\s*$")
_NAME_RE = re.compile(AGENT_PATTERN)


class _Where:
    """Errors that name the file, the section and the line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, section: str, line: int, message: str) -> MalformedInput:
        where = f"section {_TITLES.get(section, section)!r}" + (f", line {line}" if line else "")
        return MalformedInput(f"proposal {self.source}: {where}: {message}")


def _slug(title: str) -> str:
    title = re.sub(r"^(mission\s+proposal|proposal|mission)\s*[:—–-]\s*", "", title.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:63].rstrip("-")


def parse_markdown(text: str, source: str = "proposal.md", name: str | None = None) -> Proposal:
    """The mission-proposal template: a `# ` title, then `## ` sections (summary, objective, agents
    invited as `@name — role`, isolation requirements, the cell-configuration table, success criteria)."""
    where = _Where(source)
    title, title_line = "", 0
    sections: dict[str, list[tuple[int, str]]] = {}
    heads: dict[str, int] = {}
    current: str | None = None
    fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence:
            if current is not None:
                sections[current].append((number, line))
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if heading and len(heading.group(1)) == 1 and not title:
            title, title_line = heading.group(2), number
            current = None
            continue
        if heading:
            key = _SECTIONS.get(_key(heading.group(2)))
            if key is None:
                current = None  # a section the template does not know is kept in the artifact, not read
                continue
            if key in sections:
                raise where.error(key, number, f"appears twice (first at line {heads[key]})")
            sections[key], heads[key], current = [], number, key
            continue
        if current is not None:
            sections[current].append((number, line))
    for key in _REQUIRED:
        if key not in sections:
            raise where.error(key, 0, "missing (a `## " + _TITLES[key] + "` heading)")
    fields: dict[str, Any] = {}
    fields["summary"] = _prose(where, "summary", sections["summary"], heads["summary"])
    fields["objective"] = _prose(where, "objective", sections["objective"], heads["objective"])
    fields["agents"] = _agents(where, sections["agents"], heads["agents"])
    if "isolation" in sections:
        fields.update(_isolation(where, sections["isolation"], heads["isolation"]))
    fields.update(_config(where, sections["config"], heads["config"]))
    fields["success_criteria"] = [m.group(1) for _, line in sections["success"] if (m := _ITEM.match(line))] or [
        p for p in [_prose(where, "success", sections["success"], heads["success"])] if p]
    chosen = name or _slug(title)
    if not chosen:
        raise MalformedInput(f"proposal {source}: line {title_line or 1}: no `# ` title to name the cell "
                             "(or give NAME)")
    try:
        check_cell_name(chosen)
    except MalformedInput as exc:
        raise MalformedInput(f"proposal {source}: line {title_line}: the title gives the cell name {chosen!r}: "
                             f"{exc}") from None
    return Proposal(name=chosen, **fields)


def _prose(where: _Where, section: str, lines: list[tuple[int, str]], head: int) -> str:
    body = "\n".join(line for _, line in lines if not line.lstrip().startswith("<!--")).strip()
    if not body:
        raise where.error(section, head, "is empty")
    return body


def _agents(where: _Where, lines: list[tuple[int, str]], head: int) -> list[Invite]:
    out: list[Invite] = []
    seen: dict[str, int] = {}
    for number, line in lines:
        if not line.strip() or line.lstrip().startswith(("<!--", "|", ">")) or not _ITEM.match(line):
            continue
        m = _AGENT.match(line)
        if m is None:
            raise where.error("agents", number, f"expected `- @name — role`, got {line.strip()!r}")
        name, role, note = m.group(1), m.group(2).strip("*_`,.;:()").lower(), m.group(3).strip(" :—–-")
        if not _NAME_RE.match(name) or name in RESERVED:
            raise where.error("agents", number, f"@{name} is not a valid agent name ([a-z0-9][a-z0-9_.-]{{0,62}}, "
                                                "not operator, lazarus or auditor)")
        if role not in ROLES:
            raise where.error("agents", number, f"@{name}: unknown role {role!r} (lead, write, read or audit)")
        if name in seen:
            raise where.error("agents", number, f"@{name} is invited twice (first at line {seen[name]})")
        seen[name] = number
        out.append(Invite(name=name, role=role, note=note))  # type: ignore[arg-type]
    if not out:
        raise where.error("agents", head, "invites nobody (one `- @name — role` line per agent)")
    return out


def _isolation(where: _Where, lines: list[tuple[int, str]], head: int) -> dict[str, Any]:
    text = " ".join(line for _, line in lines).lower()
    out: dict[str, Any] = {}
    level = re.search(r"\b(?:level|isolation)\s*[:=]?\s*([0-9]+)\b", text) or re.search(r"^\W*([0-9])\b", text)
    if level is None:
        raise where.error("isolation", head, "no level: say `Level 1`, `Level 2` or `Level 3`")
    found = int(level.group(1))
    if found not in (1, 2, 3):
        line = next((n for n, s in lines if level.group(1) in s), head)
        raise where.error("isolation", line, f"level {found} does not exist (1, 2 or 3)")
    out["isolation"] = found
    if re.search(r"\bno network\b|\bnetwork\s*[:=]?\s*none\b|\boffline\b", text):
        out["network"] = "none"
    return out


def _config(where: _Where, lines: list[tuple[int, str]], head: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = 0
    for number, line in lines:
        if not line.strip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
            continue  # the separator row
        if len(cells) < 2:
            raise where.error("config", number, f"a row needs a setting and a value, got {line.strip()!r}")
        key = _key(cells[0])
        if key in ("setting", "settings", "key", "parameter", "option", "name"):
            continue  # the header row
        if key not in _SETTINGS:
            raise where.error("config", number, f"unknown setting {cells[0]!r} (max duration, checkpoint interval, "
                                                "auto-archive on close, max revive attempts)")
        field, parse_value = _SETTINGS[key]
        try:
            out[field] = parse_value(cells[1].strip("*_`"))
        except ValueError as exc:
            raise where.error("config", number, f"{cells[0]}: {exc}") from None
        rows += 1
    if not rows:
        raise where.error("config", head, "no table: `| Setting | Value |` rows (max duration, checkpoint "
                                          "interval, auto-archive on close, max revive attempts)")
    return out


# -- TOML --------------------------------------------------------------------------------------


class _TomlAgent(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    role: Role
    note: str = ""


class _TomlProposal(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = ""
    summary: str
    objective: str = ""
    agents: list[_TomlAgent]
    isolation: Literal[1, 2, 3] = 1
    network: Literal["host", "none"] | None = None
    max_duration: float | str = 0.0
    checkpoint_interval: float | str = 0.0
    auto_archive: bool = False
    max_revive_attempts: int | None = None
    success_criteria: list[str] = []


def parse_toml(text: str, source: str = "proposal.toml", name: str | None = None) -> Proposal:
    """The same fields as TOML: `summary`, `objective`, `[[agents]]` with `name` and `role`, `isolation`,
    `network`, `max_duration`, `checkpoint_interval` (seconds or `"72h"`), `auto_archive`,
    `max_revive_attempts`, `success_criteria`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MalformedInput(f"proposal {source}: {exc}") from None
    try:
        p = msgspec.convert(raw, _TomlProposal)
    except msgspec.ValidationError as exc:
        raise MalformedInput(f"proposal {source}: {exc}{_line_of(text, str(exc))}") from None
    fields: dict[str, Any] = {}
    for key in ("max_duration", "checkpoint_interval"):
        value = getattr(p, key)
        try:
            fields[key] = parse_duration(value) if isinstance(value, str) else float(value)
        except ValueError as exc:
            raise MalformedInput(f"proposal {source}: `{key}`: {exc}{_line_of(text, key)}") from None
        if fields[key] < 0:
            raise MalformedInput(f"proposal {source}: `{key}` must not be negative{_line_of(text, key)}")
    seen: set[str] = set()
    for a in p.agents:
        if not _NAME_RE.match(a.name) or a.name in RESERVED:
            raise MalformedInput(f"proposal {source}: [[agents]] {a.name!r} is not a valid agent name"
                                 f"{_line_of(text, a.name)}")
        if a.name in seen:
            raise MalformedInput(f"proposal {source}: [[agents]] {a.name!r} is invited twice{_line_of(text, a.name)}")
        seen.add(a.name)
    if not p.agents:
        raise MalformedInput(f"proposal {source}: `agents` invites nobody")
    if not p.summary.strip():
        raise MalformedInput(f"proposal {source}: `summary` is empty{_line_of(text, 'summary')}")
    chosen = name or p.name
    if not chosen:
        raise MalformedInput(f"proposal {source}: no `name` for the cell (or give NAME)")
    check_cell_name(chosen)
    if p.max_revive_attempts is not None and p.max_revive_attempts < 0:
        raise MalformedInput(f"proposal {source}: `max_revive_attempts` must not be negative")
    return Proposal(name=chosen, summary=p.summary.strip(), objective=p.objective.strip(),
                    agents=[Invite(name=a.name, role=a.role, note=a.note) for a in p.agents],
                    isolation=p.isolation, network=p.network, auto_archive=p.auto_archive,
                    max_attempts=p.max_revive_attempts, success_criteria=p.success_criteria, **fields)


def _line_of(text: str, hint: str) -> str:
    """`, line N` of the first line that mentions the field a validation error names, when one does."""
    m = re.search(r"`\$\.([A-Za-z_]+)", hint)
    needle = m.group(1) if m else hint
    for number, line in enumerate(text.splitlines(), start=1):
        if needle and needle in line:
            return f" (line {number})"
    return ""


def parse(filename: str, text: str, name: str | None = None) -> Proposal:
    """A `.toml` file as TOML, anything else as the Markdown template."""
    if filename.endswith(".toml"):
        return parse_toml(text, filename, name)
    return parse_markdown(text, filename, name)
