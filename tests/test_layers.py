"""The house's shape is checked, not hoped for: the import layers and the pure core hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from lazarus_bus import events as ev
from lazarus_bus.admission import ADMISSION
from lazarus_bus.fold import _HANDLERS

ROOT = Path(__file__).resolve().parents[1]
PURE = ("events", "names", "errors", "fold", "admission", "health", "policy", "planner", "resume", "config",
        "limits", "effects", "budget", "graphs", "probes", "lifetime", "proposal")


def test_import_contracts_are_kept() -> None:
    """lint-imports reads the contracts in pyproject.toml (layers, and a pure core that does no I/O)."""
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_the_pure_core_reaches_only_the_pure_core() -> None:
    """The same promise seen from the graph: everything the core imports, directly or not, is core."""
    graph = grimp.build_graph("lazarus_bus")
    core = {f"lazarus_bus.{m}" for m in PURE}
    for m in sorted(core):
        reached = {d for d in graph.find_upstream_modules(m) if d.startswith("lazarus_bus")}
        assert reached <= core, f"{m} reaches {sorted(reached - core)}"


def test_no_import_cycles() -> None:
    """No module reaches back to one that imports it (cells <-> snapshot, daemon <-> gateway are gone)."""
    graph = grimp.build_graph("lazarus_bus")
    ours = sorted(m for m in graph.modules if m.startswith("lazarus_bus."))
    for m in ours:
        for d in graph.find_modules_directly_imported_by(m):
            if d.startswith("lazarus_bus.") and not m.startswith(d + "."):
                back = graph.find_shortest_chain(importer=d, imported=m)
                assert back is None, f"import cycle: {m} -> {' -> '.join(back)}"


def test_every_event_type_has_an_admission_rule_and_a_fold_handler() -> None:
    """Adding an event type means adding it everywhere types are dispatched: these tables say so."""
    types = set(ev.EVENT_TYPES.values())
    assert set(ADMISSION) == types
    assert set(_HANDLERS) == types
