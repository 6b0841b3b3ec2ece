"""The guarantees every Store keeps (listing, claiming, importing, burying, waking, leasing); each
backend's test module subclasses this with a `make_root` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from lazarus_bus import Cell, CorruptLog, NotFound, Refused, Root, parse_draft
from lazarus_bus import events as ev
from lazarus_bus.store import Store, Wakeup

#: a fresh, empty root of the backend under test; every call another root with its own store
MakeRoot = Callable[[], Root]


class Boom(Exception):
    """A failure a test provokes inside a claim."""


def msg(i: object, by: str = "operator") -> ev.Event:
    return parse_draft({"type": "bus.message", "by": by, "topic": "t", "payload": i})


def lines_of(cell: Cell) -> list[bytes]:
    """The cell's log as `lazarus export` writes it: every line, without its newline."""
    return [line for _, line in cell.log.read_raw()]


def log_bytes(cell: Cell) -> bytes:
    return b"".join(line + b"\n" for line in lines_of(cell))


def staging(root: Root) -> list[str]:
    """Cells still being built (or left behind) under `<root>/.lazarus/`."""
    return sorted(p.name for p in root.meta.glob("new-*")) if root.meta.is_dir() else []


def populated(root: Root, name: str = "forge", **kw: object) -> Cell:
    """A cell with a few events of several kinds (an agent, messages, the activation)."""
    cell = root.create(name, mission="keep the fire", **kw)  # type: ignore[arg-type]
    cell.append(parse_draft({"type": "agent.invited", "by": "operator", "agent": "ada", "role": "lead"}))
    cell.append(parse_draft({"type": "agent.heartbeat", "by": "ada", "agent": "ada", "cycle": 3}))
    cell.append(msg({"x": [1, 2], "s": "é"}, by="ada"))
    return cell


def assert_unchanged(root: Root, ids: dict[str, str], logs: dict[str, bytes]) -> None:
    """Nothing new listed, named or staged; every existing log the same bytes."""
    fresh = Root(root.path, root.config)  # another process's view: nothing cached
    for r in (root, fresh):
        assert r.names() == ids
        assert r.cell_ids() == sorted(ids)
    assert sorted(root.store.cells()) == sorted(ids)
    assert staging(root) == []
    for cid, data in logs.items():
        assert log_bytes(Cell(root, cid)) == data


class Watching:
    """`Store.wakeups` driven from a test: a pump task queues every wake-up with the time it came."""

    def __init__(self, queue: asyncio.Queue[tuple[float, Wakeup]], task: asyncio.Task[None]) -> None:
        self.queue, self.task = queue, task
        self.seen: list[tuple[float, Wakeup]] = []

    async def until(self, matches: Callable[[Wakeup], bool], poke: Callable[[], object] | None = None, *,
                    every: float = 0.5, deadline: float = 5.0) -> Wakeup:
        """The first wake-up that matches; `poke` (run in a thread) first and again every `every` seconds
        (the store may still be setting its watch up when the first poke lands)."""
        end = time.monotonic() + deadline
        next_poke = time.monotonic()
        while True:
            now = time.monotonic()
            if poke is not None and now >= next_poke:
                await asyncio.to_thread(poke)
                next_poke = time.monotonic() + every
            left = end - time.monotonic()
            assert left > 0, f"no matching wake-up within {deadline}s; saw {[w for _, w in self.seen]}"
            if self.task.done():
                self.task.result()  # the generator's exception, if it raised
                raise AssertionError("the wake-ups ended before stop was set")
            wait = min(left, max(0.001, next_poke - time.monotonic())) if poke is not None else left
            try:
                at, wake = await asyncio.wait_for(self.queue.get(), wait)
            except TimeoutError:
                continue
            self.seen.append((at, wake))
            if matches(wake):
                return wake


@contextlib.asynccontextmanager
async def watching(store: Store, watched: Callable[[], set[str]], *, tick: float) -> AsyncIterator[Watching]:
    stop = asyncio.Event()
    queue: asyncio.Queue[tuple[float, Wakeup]] = asyncio.Queue()
    wakeups = store.wakeups(stop, watched, tick=tick, debounce=0.005, consumer=f"test-{uuid.uuid4().hex[:8]}")
    async with contextlib.aclosing(wakeups):

        async def pump() -> None:
            async for wake in wakeups:
                queue.put_nowait((time.monotonic(), wake))

        task = asyncio.create_task(pump())
        try:
            yield Watching(queue, task)
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class StoreContract:
    """Subclasses provide a `make_root` fixture (MakeRoot)."""

    # -- listing and opening ---------------------------------------------------------------

    def test_a_created_cell_is_listed_and_opened_by_id_and_by_name(self, make_root: MakeRoot) -> None:
        root = make_root()
        assert root.cell_ids() == [] and root.names() == {}
        cell = root.create("forge", mission="keep the fire")
        slug = root.create("anvil", cell_id="anvil-1")
        assert slug.id == "anvil-1"
        want = {cell.id: "forge", "anvil-1": "anvil"}
        for r in (root, Root(root.path, root.config)):  # this process and a fresh one
            assert r.names() == want
            assert r.cell_ids() == sorted(want)
            assert [c.id for c in r.cells()] == sorted(want)
            listed = r.store.cells()
            assert sorted(listed) == sorted(want)
            assert all(name in (None, want[cid]) for cid, name in listed.items())
            for ref, cid in ((cell.id, cell.id), ("forge", cell.id), ("anvil-1", "anvil-1"), ("anvil", "anvil-1")):
                opened = r.open(ref)
                assert opened.id == cid
                view = opened.refresh()
                assert view.id == cid and view.name == want[cid] and view.state == "provisioned"
            assert r.open("forge").refresh().mission == "keep the fire"
            with pytest.raises(NotFound):
                r.open("nowhere")
        assert staging(root) == []

    def test_a_taken_name_is_refused_and_leaves_nothing_behind(self, make_root: MakeRoot) -> None:
        root = make_root()
        first = populated(root)
        ids, logs = root.names(), {first.id: log_bytes(first)}
        with pytest.raises(Refused, match="taken"):
            root.create("forge")
        assert_unchanged(root, ids, logs)
        with pytest.raises(Refused, match="taken"):
            root.create("forge", cell_id="other-1")  # a fresh id does not make the name free
        assert_unchanged(root, ids, logs)
        assert "other-1" not in root.store.cells() and not (root.path / "other-1").exists()
        with pytest.raises(NotFound):
            root.open("other-1")
        assert root.open("forge").id == first.id

    def test_a_taken_id_is_refused_and_leaves_nothing_behind(self, make_root: MakeRoot) -> None:
        root = make_root()
        first = populated(root, cell_id="forge-1")
        ids, logs = root.names(), {first.id: log_bytes(first)}
        with pytest.raises(Refused, match="taken|already has a log"):
            root.create("anvil", cell_id="forge-1")
        assert_unchanged(root, ids, logs)
        with pytest.raises(NotFound):
            root.open("anvil")
        anvil = root.create("anvil")  # the refused attempt kept no hold on its name
        assert root.names() == {**ids, anvil.id: "anvil"}

    # -- claims --------------------------------------------------------------------------

    def test_a_failure_inside_claim_releases_the_name(self, make_root: MakeRoot) -> None:
        root = make_root()
        cid = str(uuid.uuid4())
        with pytest.raises(Boom), root.store.claim(cid, "forge", root.names):
            raise Boom
        assert root.names() == {} and staging(root) == []
        cell = root.create("forge")  # the name is free again
        assert root.open("forge").id == cell.id
        with pytest.raises(Refused, match="taken"):  # and claims still see taken names
            with root.store.claim(str(uuid.uuid4()), "forge", root.names):
                pass

    def test_a_create_failing_after_its_first_event_leaves_nothing_and_frees_name_and_id(
            self, make_root: MakeRoot, monkeypatch: pytest.MonkeyPatch) -> None:
        import lazarus_bus.cells as cells

        root = make_root()
        real = cells._manifest_bytes

        def disk_full(view: object) -> bytes:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cells, "_manifest_bytes", disk_full)  # after cell.provisioned is in the log
        with pytest.raises(OSError, match="No space"):
            root.create("forge", cell_id="forge-1")
        assert_unchanged(root, {}, {})
        assert not (root.path / "forge-1").exists()
        with pytest.raises(NotFound):
            root.open("forge")
        monkeypatch.setattr(cells, "_manifest_bytes", real)
        cell = root.create("forge", cell_id="forge-1")  # the same name and the same id, as if never tried
        assert root.names() == {"forge-1": "forge"}
        assert [e.type for e in cell.log.read()] == ["cell.provisioned"]
        assert staging(root) == []

    # -- import --------------------------------------------------------------------------

    def test_an_imported_log_is_byte_for_byte_and_importing_it_again_is_refused(self, make_root: MakeRoot) -> None:
        src = make_root()
        cell = populated(src)
        lines = lines_of(cell)
        exported = log_bytes(cell)
        assert len(lines) == 5  # provisioned, invited, heartbeat, activated, message
        dst = make_root()
        imported = dst.import_log(lines)
        assert imported.id == cell.id
        assert log_bytes(imported) == exported
        assert log_bytes(Root(dst.path, dst.config).open("forge")) == exported  # as another process reads it
        assert dst.names() == {cell.id: "forge"} and dst.open("forge").id == cell.id
        assert dst.open(cell.id).refresh() == cell.replay()
        assert staging(dst) == []
        # importing again, into it or into the root it came from, is refused and changes nothing
        for root, ids in ((dst, {cell.id: "forge"}), (src, {cell.id: "forge"})):
            with pytest.raises(Refused, match="taken"):
                root.import_log(lines)
            assert_unchanged(root, ids, {cell.id: exported})
        # the imported cell's chain goes on from the exported head
        seq = imported.append(msg("after"))[0].seq
        got = lines_of(imported)
        assert seq == len(lines) + 1 and got[:-1] == lines
        assert json.loads(got[-1])["prev"] == hashlib.sha256(lines[-1]).hexdigest()

    def test_an_import_whose_name_is_taken_is_refused_and_leaves_nothing(self, make_root: MakeRoot) -> None:
        src = make_root()
        lines = lines_of(populated(src))
        dst = make_root()
        other = dst.create("forge")
        ids, logs = dst.names(), {other.id: log_bytes(other)}
        with pytest.raises(Refused, match="taken"):
            dst.import_log(lines)
        assert_unchanged(dst, ids, logs)
        assert json.loads(lines[0])["cell"] not in dst.store.cells()

    def test_a_corrupt_export_is_refused_and_leaves_nothing(self, make_root: MakeRoot) -> None:
        src = make_root()
        lines = lines_of(populated(src))
        broken = [*lines]
        broken[1] = broken[1].replace(b'"role":"lead"', b'"role":"read"')
        assert broken != lines
        dst = make_root()
        with pytest.raises(CorruptLog):
            dst.import_log(broken)
        assert_unchanged(dst, {}, {})

    # -- destroy -------------------------------------------------------------------------

    def test_destroy_moves_the_log_to_the_graveyard_byte_for_byte_and_frees_name_and_id(
            self, make_root: MakeRoot) -> None:
        root = make_root()
        cell = populated(root)
        keep = root.create("anvil")
        with pytest.raises(Refused, match="not allowed"):  # only an archived cell may be destroyed
            cell.destroy()
        assert root.open("forge").id == cell.id and not root.graveyard.joinpath(f"{cell.id}.jsonl").exists()
        cell.append(ev.CellArchived(by="operator", reason="done"))
        before = lines_of(cell)
        seq = cell.destroy(reason="gone")
        assert seq == len(before) + 1
        grave = root.graveyard / f"{cell.id}.jsonl"
        data = grave.read_bytes()
        assert data.startswith(b"".join(line + b"\n" for line in before))
        last = data[len(b"".join(line + b"\n" for line in before)):]
        assert last.endswith(b"\n") and last.count(b"\n") == 1
        tail = json.loads(last)
        assert (tail["type"], tail["seq"], tail["cell"], tail["reason"]) == ("cell.destroyed", seq, cell.id, "gone")
        assert tail["prev"] == hashlib.sha256(before[-1]).hexdigest()
        for r in (root, Root(root.path, root.config)):
            assert r.names() == {keep.id: "anvil"}
            assert cell.id not in r.store.cells()
            for ref in (cell.id, "forge"):
                with pytest.raises(NotFound):
                    r.open(ref)
        assert not (root.path / cell.id).exists()
        assert staging(root) == []
        again = root.create("forge")  # the name is free again
        assert again.id != cell.id and root.open("forge").id == again.id
        reused = root.create("ember", cell_id=cell.id)  # and so is the id, with a log of its own
        assert [e.type for e in reused.log.read()] == ["cell.provisioned"]
        assert grave.read_bytes() == data  # the grave is kept
        assert root.names() == {keep.id: "anvil", again.id: "forge", cell.id: "ember"}

    def test_an_exported_log_can_be_imported_again_after_its_cell_was_destroyed(self, make_root: MakeRoot) -> None:
        root = make_root()
        cell = populated(root)
        lines, exported = lines_of(cell), log_bytes(cell)
        cell.append(ev.CellArchived(by="operator"))
        cell.destroy()
        back = root.import_log(lines)  # the id and the name are free: the exported cell comes back
        assert back.id == cell.id
        assert log_bytes(back) == exported
        assert root.names() == {cell.id: "forge"} and staging(root) == []

    # -- wake-ups ------------------------------------------------------------------------

    def test_an_append_to_a_watched_cell_wakes_it(self, make_root: MakeRoot) -> None:
        root = make_root()
        cell, quiet = root.create("forge"), root.create("anvil")
        n = iter(range(1_000_000))

        async def go() -> None:
            # a tick far beyond the deadline: only a notification can name the cell in time
            async with watching(root.store, lambda: {cell.id, quiet.id}, tick=30.0) as w:
                wake = await w.until(lambda x: cell.id in x.cells, lambda: cell.append(msg(next(n))))
                assert quiet.id not in wake.cells

        asyncio.run(go())

    def test_a_new_cell_is_noticed(self, make_root: MakeRoot) -> None:
        root = make_root()
        existing = root.create("forge")
        created: list[str] = []
        n = iter(range(1_000_000))

        def create() -> None:
            created.append(root.create(f"fresh{next(n)}").id)

        async def go() -> None:
            async with watching(root.store, lambda: {existing.id}, tick=30.0) as w:
                await w.until(lambda x: x.rescan or bool(x.cells & set(created)), create)

        asyncio.run(go())

    def test_a_rescan_comes_at_least_every_tick_even_while_cells_are_busy(self, make_root: MakeRoot) -> None:
        """"a rescan at least every `tick`" (Store.wakeups): a busy root must not starve the re-check."""
        root = make_root()
        cell = root.create("forge")
        tick = 0.2
        stop = threading.Event()

        def busy() -> None:
            i = 0
            while not stop.is_set():
                cell.append(msg(i))
                i += 1
                stop.wait(0.01)

        async def go() -> list[float]:
            writer = threading.Thread(target=busy)
            async with watching(root.store, lambda: {cell.id}, tick=tick) as w:
                await w.until(lambda x: cell.id in x.cells, lambda: cell.append(msg("ready")))
                writer.start()
                try:
                    started = time.monotonic()
                    rescans: list[float] = []
                    while time.monotonic() < started + 3.0:
                        await w.until(lambda x: True, deadline=3.0 + 10 * tick)
                        at, wake = w.seen[-1]
                        if at >= started and wake.rescan:
                            rescans.append(at)
                    named = sum(1 for at, x in w.seen if at >= started and cell.id in x.cells)
                    assert named, "the busy cell was never named"
                    return [started, *rescans]
                finally:
                    stop.set()
                    writer.join(10)

        marks = asyncio.run(go())
        gaps = [b - a for a, b in zip(marks, marks[1:])]
        assert len(marks) > 1 and max(gaps) < 5 * tick, (
            f"rescans during 3 s of appends (tick {tick}): {len(marks) - 1}, longest gap "
            f"{max(gaps) if gaps else 3.0:.2f} s")

    # -- leases --------------------------------------------------------------------------

    def test_a_lease_holder_renews_with_its_revision_and_release_lets_another_take_it(
            self, make_root: MakeRoot) -> None:
        root = make_root()
        cid = root.create("forge").id
        store = root.store
        rev = store.lease(cid, "alpha/0001", 5.0, None)
        assert isinstance(rev, int)
        again = store.lease(cid, "alpha/0001", 5.0, rev)
        assert isinstance(again, int) and again >= rev
        third = store.lease(cid, "alpha/0001", 5.0, again)
        assert isinstance(third, int) and third >= again
        store.release(cid, "alpha/0001")
        other = store.lease(cid, "beta/0002", 5.0, None)
        assert isinstance(other, int) and other >= third
        store.release(cid, "beta/0002")
