"""Where each LangGraph thread stands, folded from the cell's graph.* events: deterministic, no I/O.

The saver in `langgraph.py` keeps one of these in step with the log; anything else that reads a log
(a replay, an audit script) gets the same answer from the same events. Tombstones (`graph.deleted`)
hide what they name from here on; the events before them stay in the log and keep its chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from . import events as ev

__all__ = ["GraphIndex", "Write"]

# (task_id, channel, value blob, task_path)
Write = tuple[str, str, str, str]
# (thread, namespace, checkpoint id)
Key = tuple[str, str, str]


class GraphIndex:
    """Checkpoints by thread, namespace and id, and the pending writes against each.

    Mutable on purpose: a saver folds one event per step of a graph, and copying maps per event would
    make a long run quadratic. `seq` is the last event folded, graph or not."""

    def __init__(self) -> None:
        self.seq = 0
        self.threads: dict[str, dict[str, dict[str, ev.GraphCheckpoint]]] = {}
        self.latest: dict[tuple[str, str], str] = {}  # (thread, namespace) -> the greatest checkpoint id
        self.writes: dict[str, dict[tuple[str, str], dict[tuple[str, int], Write]]] = {}

    def fold(self, events: Iterable[ev.Event]) -> None:
        for e in events:
            self.apply(e)

    def apply(self, e: ev.Event) -> None:
        """One event; those that are not graph.* only move `seq`."""
        if isinstance(e, ev.GraphCheckpoint):
            by_id = self.threads.setdefault(e.thread_id, {}).setdefault(e.checkpoint_ns, {})
            by_id[e.checkpoint_id] = e
            spot = (e.thread_id, e.checkpoint_ns)
            if e.checkpoint_id >= self.latest.get(spot, ""):
                self.latest[spot] = e.checkpoint_id
        elif isinstance(e, ev.GraphWrites):
            stored = self.writes.setdefault(e.thread_id, {}).setdefault((e.checkpoint_ns, e.checkpoint_id), {})
            for idx, channel, blob in e.writes:
                key = (e.task_id, idx)
                if idx >= 0 and key in stored:
                    continue  # a task's regular write is kept as first recorded (a retried step repeats it)
                stored[key] = (e.task_id, channel, blob, e.task_path)
        elif isinstance(e, ev.GraphDeleted):
            self._delete(e.thread_id, e.checkpoints)
        if e.seq:
            self.seq = e.seq

    def _delete(self, thread_id: str, checkpoints: Sequence[tuple[str, str]]) -> None:
        if not checkpoints:
            for ns in self.threads.pop(thread_id, {}):
                self.latest.pop((thread_id, ns), None)
            self.writes.pop(thread_id, None)
            return
        spaces = self.threads.get(thread_id, {})
        writes = self.writes.get(thread_id, {})
        touched = set()
        for ns, checkpoint_id in checkpoints:
            if spaces.get(ns, {}).pop(checkpoint_id, None) is not None:
                touched.add(ns)
            writes.pop((ns, checkpoint_id), None)
        for ns in touched:
            left = spaces[ns]
            if left:
                self.latest[(thread_id, ns)] = max(left)
            else:
                del spaces[ns]
                self.latest.pop((thread_id, ns), None)

    def get(self, thread_id: str, ns: str, checkpoint_id: str | None) -> ev.GraphCheckpoint | None:
        """That checkpoint, or with no id the thread's newest in that namespace."""
        if checkpoint_id is None:
            checkpoint_id = self.latest.get((thread_id, ns))
            if checkpoint_id is None:
                return None
        return self.threads.get(thread_id, {}).get(ns, {}).get(checkpoint_id)

    def pending(self, thread_id: str, ns: str, checkpoint_id: str) -> list[Write]:
        """The writes against a checkpoint, in LangGraph's `writes_sort_key` order (task path, task, index)."""
        stored = self.writes.get(thread_id, {}).get((ns, checkpoint_id), {})
        return [stored[k] for k in sorted(stored, key=lambda k: (stored[k][3], k[0], k[1]))]

    def listing(self, thread_id: str | None, ns: str | None, checkpoint_id: str | None = None,
                before: str | None = None) -> Iterator[ev.GraphCheckpoint]:
        """Checkpoints newest first within each namespace, optionally one thread, namespace or id, and only
        those older than `before`."""
        threads = [thread_id] if thread_id is not None else list(self.threads)
        for tid in threads:
            for space, by_id in list(self.threads.get(tid, {}).items()):
                if ns is not None and space != ns:
                    continue
                for cid in sorted(by_id, reverse=True):
                    if checkpoint_id is not None and cid != checkpoint_id:
                        continue
                    if before is not None and cid >= before:
                        continue
                    yield by_id[cid]

    def all_but_latest(self, thread_id: str) -> list[tuple[str, str]]:
        """What `prune(strategy="keep_latest")` drops: every checkpoint but the newest of each namespace."""
        return [(ns, cid) for ns, by_id in self.threads.get(thread_id, {}).items()
                for cid in sorted(by_id) if cid != self.latest.get((thread_id, ns))]

    def of_runs(self, run_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """Per thread, the checkpoints the given runs made."""
        wanted = set(run_ids)
        out: dict[str, list[tuple[str, str]]] = {}
        for tid, spaces in self.threads.items():
            for ns, by_id in spaces.items():
                for cid, e in by_id.items():
                    if e.run_id and e.run_id in wanted:
                        out.setdefault(tid, []).append((ns, cid))
        return out

    def thread(self, thread_id: str) -> tuple[list[ev.GraphCheckpoint],
                                              dict[tuple[str, str], dict[tuple[str, int], Write]]]:
        """A thread's checkpoints oldest first and the writes against each (by task and index), for a copy."""
        spaces = self.threads.get(thread_id, {})
        saved = sorted((e for by_id in spaces.values() for e in by_id.values()), key=lambda e: e.checkpoint_id)
        writes = {key: dict(stored) for key, stored in self.writes.get(thread_id, {}).items()}
        return saved, writes
