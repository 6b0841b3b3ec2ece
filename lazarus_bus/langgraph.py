"""A LangGraph checkpointer on the cell's log, so a revived agent's graph resumes where it died.

Extra `lazarus-pit[langgraph]`. Every `put` is a `graph.checkpoint` event and every `put_writes` a
`graph.writes` event, appended (and fenced) as the agent; the values they carry are content-addressed
blobs under `checkpoints/graph/`, written and made durable before the event that names them (the
checkpoint's own bookkeeping and metadata are inline, readable with `lazarus tail`). Deletes
and prunes append a `graph.deleted` tombstone: the log stays append-only and its hash chain intact.
Nothing in the core imports this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_serializable_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as exc:  # the core installs without LangGraph; this adapter is the extra
    raise ImportError(f"lazarus_bus.langgraph needs the langgraph extra: pip install 'lazarus-pit[langgraph]' "
                      f"({exc})") from exc

from . import events as ev
from .client import Agent, connect
from .errors import CorruptLog, MalformedInput, NotFound, Refused
from .files import fsync_dir
from .graphs import GraphIndex, Write
from .log import Appended

__all__ = ["LazarusSaver"]

BLOBS = "checkpoints/graph"
CACHE = 4096  # blobs kept in memory: content-addressed, so a cached one is never stale
ON_DISK = 65536  # blob names known to be on disk, so a repeated value costs no stat
PER_TOMBSTONE = 4096  # checkpoints named by one graph.deleted, far below max_event_bytes


class LazarusSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints as events of the cell's log, sync and async.

    `LazarusSaver()` opens the cell and agent from the environment the daemon gives (LAZARUS_ROOT,
    LAZARUS_CELL, LAZARUS_AGENT); `LazarusSaver(cell=..., agent=..., root=...)` names them, and
    `LazarusSaver(agent=me)` shares an agent handle from `lazarus_bus.connect()`."""

    def __init__(self, cell: str | None = None, agent: str | Agent | None = None, *,
                 root: str | os.PathLike[str] | None = None, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self._owns = not isinstance(agent, Agent)  # a handle it opened itself is closed with it
        self.agent = agent if isinstance(agent, Agent) else connect(cell, agent, root=root)
        self.cell = self.agent.cell
        if self.cell.remote is not None:
            raise Refused("LazarusSaver writes blobs under the cell's checkpoints/, which a sandboxed agent "
                          "(isolation 2 or 3) may not; run the graph's agent at isolation 1")
        self.blobs = self.cell.dir / BLOBS
        self.durable = self.cell.root.config.fsync != "never"
        self.index = GraphIndex()
        self._lock = threading.RLock()
        self._cache: dict[str, bytes] = {}
        self._on_disk: set[str] = set()
        self._made_dir = False
        with self._lock:
            self._catch_up()

    # -- the log ------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Fold what the log gained since the last look (other processes append too)."""
        self.index.fold(self.cell.log.read(self.index.seq))

    def _append(self, drafts: Sequence[ev.Event]) -> list[Appended]:
        with self._lock:
            written = self.agent.record(drafts)
            if written and not written[0].duplicate and written[0].seq == self.index.seq + 1:
                self.index.fold(a.event for a in written)
            else:
                self._catch_up()
            return written

    # -- blobs --------------------------------------------------------------------------

    def _keep(self, typed: tuple[str, bytes], made: list[Path]) -> str:
        """Store a serialized value under its SHA-256 (once: the same bytes are the same blob)."""
        raw = typed[0].encode() + b"\0" + typed[1]
        sha = hashlib.sha256(raw).hexdigest()
        if sha in self._on_disk:
            return sha
        path = self.blobs / sha
        if not path.exists():
            if not self._made_dir:
                self.blobs.mkdir(parents=True, exist_ok=True)
                self._made_dir = True
            tmp = self.blobs / f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(raw)
                    if self.durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.rename(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            made.append(path)
        if len(self._on_disk) >= ON_DISK:
            self._on_disk.clear()  # a hint, not a record: forgetting costs one stat per blob
        self._on_disk.add(sha)
        self._remember(sha, raw)
        return sha

    def _settle(self, made: list[Path]) -> None:
        """New blobs durable (and shared with other hosts) before any event names them."""
        if not made:
            return
        if self.durable:
            fsync_dir(self.blobs)
        store = self.cell.root.store
        if store.spans_hosts:
            for path in made:
                store.keep(self.cell.id, f"{BLOBS}/{path.name}", path)

    def _remember(self, sha: str, raw: bytes) -> None:
        if len(self._cache) >= CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[sha] = raw

    def _raw(self, sha: str) -> bytes:
        raw = self._cache.get(sha)
        if raw is not None:
            return raw
        path = self.blobs / sha
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if not self.cell.root.store.fetch(self.cell.id, f"{BLOBS}/{sha}", path):
                raise NotFound(f"cell {self.cell.id}: blob {BLOBS}/{sha} named by the log is missing") from None
            raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != sha:
            raise CorruptLog(f"{path}: blob fails its SHA-256 check; the graph's state there cannot be trusted")
        self._on_disk.add(sha)
        self._remember(sha, raw)
        return raw

    def _load(self, sha: str) -> Any:
        kind, _, data = self._raw(sha).partition(b"\0")
        return self.serde.loads_typed((kind.decode(), data))

    # -- reading ------------------------------------------------------------------------

    def _inline_or_blob(self, value: dict[str, Any], made: list[Path]) -> tuple[dict[str, Any] | None, str | None]:
        """Bookkeeping goes inline, readable in the log, when JSON reads it back exactly; else as a blob."""
        try:
            back = msgspec.json.decode(msgspec.json.encode(value))
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            back = None
        if back is not None and back == value:
            return back, None
        return None, self._keep(self.serde.dumps_typed(value), made)

    def _part(self, inline: dict[str, Any] | None, blob: str | None) -> dict[str, Any]:
        if inline is not None:
            return msgspec.json.decode(msgspec.json.encode(inline))  # type: ignore[no-any-return]  # a copy
        return self._load(blob) if blob else {}

    def _metadata(self, saved: ev.GraphCheckpoint) -> dict[str, Any]:
        return self._part(saved.metadata, saved.metadata_blob)

    def _tuple(self, saved: ev.GraphCheckpoint, writes: list[Write]) -> CheckpointTuple:
        body = self._part(saved.checkpoint, saved.checkpoint_blob)
        body["channel_values"] = {k: self._load(sha) for k, sha in saved.channels.items()}
        return CheckpointTuple(
            config=_config(saved.thread_id, saved.checkpoint_ns, saved.checkpoint_id),
            checkpoint=body,  # type: ignore[arg-type]
            metadata=self._metadata(saved),  # type: ignore[arg-type]
            parent_config=(_config(saved.thread_id, saved.checkpoint_ns, saved.parent_checkpoint_id)
                           if saved.parent_checkpoint_id else None),
            pending_writes=[(task_id, channel, self._load(sha)) for task_id, channel, sha, _ in writes],
        )

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = _where(config)
        with self._lock:
            self._catch_up()
            saved = self.index.get(thread_id, ns, get_checkpoint_id(config))
            if saved is None:
                return None
            writes = self.index.pending(thread_id, ns, saved.checkpoint_id)
            return self._tuple(saved, writes)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        conf = (config or {}).get("configurable", {})
        thread_id = str(conf["thread_id"]) if conf.get("thread_id") is not None else None
        ns = conf.get("checkpoint_ns")
        before_id = get_checkpoint_id(before) if before else None
        with self._lock:
            self._catch_up()
            found = list(self.index.listing(thread_id, ns, conf.get("checkpoint_id"), before_id))
        left = limit
        for saved in found:
            if left is not None and left <= 0:
                return
            if filter:
                with self._lock:
                    metadata = self._metadata(saved)
                if not all(metadata.get(k) == v for k, v in filter.items()):
                    continue
            with self._lock:
                tup = self._tuple(saved, self.index.pending(saved.thread_id, saved.checkpoint_ns,
                                                            saved.checkpoint_id))
            if left is not None:
                left -= 1
            yield tup

    # -- writing ------------------------------------------------------------------------

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        thread_id, ns = _where(config)
        body = dict(checkpoint)
        values: dict[str, Any] = body.pop("channel_values", None) or {}  # type: ignore[assignment]
        meta = get_serializable_checkpoint_metadata(config, metadata)
        made: list[Path] = []
        with self._lock:
            channels = {k: self._keep(self.serde.dumps_typed(v), made) for k, v in values.items()}
            step = meta.get("step")
            body_inline, body_blob = self._inline_or_blob(body, made)
            meta_inline, meta_blob = self._inline_or_blob(dict(meta), made)
            draft = ev.GraphCheckpoint(
                by=self.agent.name, thread_id=thread_id, checkpoint_id=checkpoint["id"], checkpoint_ns=ns,
                parent_checkpoint_id=get_checkpoint_id(config), channels=channels,
                checkpoint=body_inline, checkpoint_blob=body_blob, metadata=meta_inline, metadata_blob=meta_blob,
                run_id=str(meta.get("run_id") or ""), step=step if isinstance(step, int) and not isinstance(
                    step, bool) else None, source=str(meta.get("source") or ""))
            self._settle(made)
            self._append([draft])
        return _config(thread_id, ns, checkpoint["id"])

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        thread_id, ns = _where(config)
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            raise MalformedInput("put_writes needs the config of a stored checkpoint (no checkpoint_id given)")
        made: list[Path] = []
        with self._lock:
            rows = [(WRITES_IDX_MAP.get(channel, idx), channel, self._keep(self.serde.dumps_typed(value), made))
                    for idx, (channel, value) in enumerate(writes)]
            self._settle(made)
            self._append([ev.GraphWrites(by=self.agent.name, thread_id=thread_id, checkpoint_id=checkpoint_id,
                                         checkpoint_ns=ns, task_id=task_id, task_path=task_path, writes=rows)])

    def delete_thread(self, thread_id: str) -> None:
        """A tombstone for the whole thread; its blobs stay (other threads or copies may share them)."""
        with self._lock:
            self._catch_up()
            if str(thread_id) in self.index.threads or str(thread_id) in self.index.writes:
                self._append([ev.GraphDeleted(by=self.agent.name, thread_id=str(thread_id), reason="delete_thread")])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Tombstones naming the checkpoints those runs made (from `run_id` in their metadata)."""
        with self._lock:
            self._catch_up()
            for thread_id, gone in self.index.of_runs(str(r) for r in run_ids).items():
                self._tombstones(thread_id, gone, "delete_for_runs")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest`: tombstones for all but the newest checkpoint of each namespace (its writes
        stay); `delete`: a tombstone for each whole thread."""
        if strategy not in ("keep_latest", "delete"):
            raise MalformedInput(f"prune strategy {strategy!r}: expected 'keep_latest' or 'delete'")
        with self._lock:
            self._catch_up()
            for thread_id in map(str, thread_ids):
                if strategy == "delete":
                    if thread_id in self.index.threads or thread_id in self.index.writes:
                        self._append([ev.GraphDeleted(by=self.agent.name, thread_id=thread_id, reason="prune")])
                else:
                    self._tombstones(thread_id, self.index.all_but_latest(thread_id), "prune")

    def _tombstones(self, thread_id: str, gone: Sequence[tuple[str, str]], reason: str) -> None:
        drafts = [ev.GraphDeleted(by=self.agent.name, thread_id=thread_id, checkpoints=[*gone[i:i + PER_TOMBSTONE]],
                                  reason=reason) for i in range(0, len(gone), PER_TOMBSTONE)]
        if drafts:
            self._append(drafts)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """The source's checkpoints and writes appended again under the target thread, naming the same
        blobs: a copy costs events, not bytes."""
        target = str(target_thread_id)
        with self._lock:
            self._catch_up()
            saved, writes = self.index.thread(str(source_thread_id))
            drafts: list[ev.Event] = []
            for e in saved:
                drafts.append(ev.GraphCheckpoint(
                    by=self.agent.name, thread_id=target, checkpoint_id=e.checkpoint_id, checkpoint_ns=e.checkpoint_ns,
                    parent_checkpoint_id=e.parent_checkpoint_id, channels=e.channels, checkpoint=e.checkpoint,
                    checkpoint_blob=e.checkpoint_blob, metadata=e.metadata, metadata_blob=e.metadata_blob,
                    run_id=e.run_id, step=e.step, source=e.source))
            for (ns, checkpoint_id), stored in writes.items():
                by_task: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
                for (task_id, idx), (_, channel, sha, task_path) in stored.items():
                    by_task.setdefault((task_id, task_path), []).append((idx, channel, sha))
                for (task_id, task_path), rows in by_task.items():
                    drafts.append(ev.GraphWrites(by=self.agent.name, thread_id=target, checkpoint_id=checkpoint_id,
                                                 checkpoint_ns=ns, task_id=task_id, task_path=task_path, writes=rows))
            for i in range(0, len(drafts), 256):  # batches well under max_event_bytes apiece
                self._append(drafts[i:i + 256])

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's own savers make them: a zero-padded counter, then a random tie-break."""
        if current is None:
            n = 0
        elif isinstance(current, int):
            n = current
        else:
            n = int(current.split(".")[0])
        return f"{n + 1:032}.{random.random():016}"

    # -- async: the same, off the event loop ----------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for tup in found:
            yield tup

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy))

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        if self._owns:
            self.cell.close()

    def __enter__(self) -> LazarusSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LazarusSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _where(config: RunnableConfig) -> tuple[str, str]:
    conf = config.get("configurable") or {}
    if conf.get("thread_id") is None:
        raise MalformedInput("a LangGraph config needs configurable.thread_id")
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str | None) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
