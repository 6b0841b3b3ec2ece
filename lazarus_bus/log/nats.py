"""The NATS JetStream backend: one subject per cell, the same envelope, chain and guarantees as the file.

A cell's `seq` and hash chain are the contract; JetStream's stream sequences and its dedup window
are tools. Each event is published with `Nats-Msg-Id` (its id and seq) and the expected last sequence of
the cell's subject, so concurrent writers on different machines never leave a gap or a fork:
the loser re-reads the head, re-admits its drafts against the new state and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from ..errors import Conflict, CorruptLog, LazarusError, Refused
from ..events import ZERO_HASH, Event, decode_event
from ..names import new_id
from .base import Admit, Appended, Head, IdWindow, LogBackend, check_link, stamp

__all__ = ["NatsLog", "Nats", "Security", "servers_of", "subject_of", "SUBJECTS"]

log = logging.getLogger(__name__)
SUBJECT_PREFIX = "lazarus.cells"
SUBJECTS = f"{SUBJECT_PREFIX}.*.events"
CELLS_BUCKET = "LAZARUS_CELLS"
LEASES_BUCKET = "LAZARUS_LEASES"
WRONG_LAST_SEQUENCE = (10071, 10164)  # expected last subject sequence; last sequence (2.10+)
JS_TIMEOUT = 4.0  # one JetStream request; a node down or an election is retried (Nats.call)
RECONNECT_WAIT = 2.0  # at most this long for a lost connection to come back, per request
DIRECT_READ = 64  # reads of fewer messages use direct gets
BATCH = 1000
T = TypeVar("T")


def _secured(security: Security) -> dict[str, Any]:
    """nats.connect's keyword arguments for a secured cluster; a missing file is one clear line."""
    kw: dict[str, Any] = {}
    for name, path in msgspec.structs.asdict(security).items():
        if path and not os.path.isfile(path):
            raise LazarusError(f"nats_{name} {path}: no such file")
    if security.creds:
        kw["user_credentials"] = security.creds
    if security.tls_ca or security.tls_cert:
        context = ssl.create_default_context(cafile=security.tls_ca or None)
        if security.tls_cert:
            context.load_cert_chain(security.tls_cert, security.tls_key or None)
        kw["tls"] = context
    return kw


def subject_of(cell: str) -> str:
    return f"{SUBJECT_PREFIX}.{cell}.events"


class Security(msgspec.Struct, frozen=True, kw_only=True):
    """How a secured cluster is reached: a credentials file, TLS keys (empty: none)."""

    creds: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


MIN_REPLICATED = (2, 10, 0)  # 2.9 before 2.9.21 can store two messages at one expected sequence (#4320)


def servers_of(url: str | list[str]) -> list[str]:
    """`nats_url` as a list: a TOML list, or one string of comma-separated URLs."""
    urls = url if isinstance(url, list) else url.split(",")
    out = [u.strip() for u in urls if u.strip()]
    if not out:
        raise LazarusError("nats_url names no server")
    return out


def _import_nats(websocket: bool) -> Any:
    """nats-py, without the aiohttp it imports for its WebSocket transport whenever aiohttp is installed
    (a fifth of a second and two TLS contexts at every CLI call) unless a ws:// server needs it."""
    if websocket or "nats" in sys.modules or "aiohttp" in sys.modules:
        import nats
        return nats
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` raises ImportError
    try:
        import nats
    finally:
        del sys.modules["aiohttp"]
    return nats


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.lstrip("v").split("-")[0].split(".")[:3]:
        parts.append(int(part) if part.isdigit() else 0)
    return tuple(parts)


class Nats:
    """One connection per process and cluster, driven from a background event loop so callers stay sync."""

    _shared: dict[tuple[str, str], Nats] = {}
    _guard = threading.Lock()

    def __init__(self, url: str | list[str], stream: str, replicas: int = 1, storage: str = "file",
                 security: Security | None = None) -> None:
        self.servers = servers_of(url)
        nats = _import_nats(websocket=any(s.startswith("ws") for s in self.servers))
        self.url, self.stream, self.replicas = ",".join(self.servers), stream, replicas
        self._ttls: dict[str, float] = {}
        self.trouble = ""  # what is wrong with the connection now ("" when all is well), for status
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lazarus-nats", daemon=True)
        self.thread.start()
        try:
            self.nc = self.run(nats.connect(self.servers, connect_timeout=3, max_reconnect_attempts=-1,
                                            reconnect_time_wait=0.2, allow_reconnect=True,
                                            error_cb=self._quiet, disconnected_cb=self._gone,
                                            reconnected_cb=self._back, **_secured(security or Security())),
                               timeout=10)
        except LazarusError:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server is one clear line
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise LazarusError(f"cannot reach NATS at {self.url}: {exc or type(exc).__name__}") from None
        self.js = self.nc.jetstream(timeout=JS_TIMEOUT)
        try:
            self._check_version()
            self.call(self._ensure, replicas, storage)
        except BaseException:
            self.run(self.nc.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    def _check_version(self) -> None:
        """Replication is refused where the server can fork a subject's sequence."""
        found = self.nc.connected_server_version
        version = f"{found.major}.{found.minor}.{found.patch}" if found is not None else ""
        if self.replicas > 1 and _version(version) < MIN_REPLICATED:
            raise Refused(f"nats_replicas = {self.replicas} needs nats-server 2.10 or newer, and "
                               f"{self.nc.connected_url.netloc if self.nc.connected_url else self.url} runs "
                               f"{version or 'an unknown version'} (2.9 before 2.9.21 can store two messages "
                               "at one expected sequence: nats-io/nats-server#4320)")

    async def _quiet(self, exc: Exception) -> None:
        """Connection trouble is logged, not printed as a traceback; calls that need the server fail clearly."""
        log.debug("nats %s: %s", self.url, exc)

    async def _gone(self) -> None:
        if not self.nc.is_closed and not getattr(self, "closing", False):
            self.trouble = "disconnected from NATS; reconnecting"
            log.warning("nats %s: disconnected; reconnecting", self.url)

    async def _back(self) -> None:
        self.trouble = ""
        log.warning("nats %s: reconnected", self.url)

    def close(self) -> None:
        """Drop the shared connection (tests and tools that stop their server)."""
        with self._guard:
            self._shared.pop((self.url, self.stream), None)
        self.closing = True
        if not self.nc.is_closed:
            self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)

    @classmethod
    def get(cls, url: str | list[str], stream: str, replicas: int = 1, storage: str = "file",
            security: Security | None = None) -> Nats:
        with cls._guard:
            key = (",".join(servers_of(url)), stream)
            conn = cls._shared.get(key)
            if conn is None or conn.nc.is_closed:
                conn = cls._shared[key] = cls(url, stream, replicas, storage, security)
            return conn

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the connection's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _connected(self, wait: float) -> None:
        """A connection lost comes back in moments when another server is up (reconnect_time_wait);
        with none up, fail fast: the daemon's loop must not wait on a server that is not there."""
        until = time.monotonic() + wait
        while not self.nc.is_connected:
            if self.nc.is_closed or time.monotonic() >= until:
                raise LazarusError(f"NATS at {self.url}: not connected ({self.trouble or 'reconnecting'})")
            time.sleep(0.02)

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 15) -> T:
        """`fn(*args)` on the connection's loop, again after a transient failure (a node down, a stream
        electing its leader: a timeout, no responders, a 503) until `timeout`. Appends may be retried:
        Nats-Msg-Id makes a second copy of one a duplicate, which the id rule answers."""
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import ServiceUnavailableError

        deadline, pause = time.monotonic() + timeout, 0.1
        while True:
            self._connected(min(RECONNECT_WAIT, max(0.0, deadline - time.monotonic())))
            try:
                return self.run(fn(*args), timeout=max(0.1, deadline - time.monotonic()))
            except (NatsTimeout, NoRespondersError, ServiceUnavailableError, TimeoutError) as exc:
                if time.monotonic() + pause >= deadline:
                    raise LazarusError(f"NATS at {self.url}: {type(exc).__name__}: no answer within {timeout:g} s"
                                       ) from None
                log.info("nats %s: %s; again in %.1f s", self.url, type(exc).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _ensure(self, replicas: int, storage: str) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await self.js.stream_info(self.stream)
            return
        except NotFoundError:
            pass
        try:
            owner = await self.js.find_stream_name_by_subject(SUBJECTS)
        except NotFoundError:
            owner = None
        if owner is not None:
            raise LazarusError(f"NATS stream {owner!r} already holds the subjects {SUBJECTS}; "
                               f"set nats_stream = {owner!r} (one stream per NATS account)")
        await self.js.add_stream(StreamConfig(
                name=self.stream, subjects=[SUBJECTS], num_replicas=replicas, duplicate_window=120.0,
                storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE, allow_direct=True))

    async def kv(self, bucket: str, ttl: float | None = None) -> Any:
        """A KV bucket, created on first use; a `ttl` given later applies to a bucket made earlier."""
        from nats.js.errors import BucketNotFoundError

        try:
            kv = await self.js.key_value(bucket)
        except BucketNotFoundError:
            return await self.js.create_key_value(bucket=bucket, ttl=ttl, history=1, replicas=self.replicas)
        if ttl is not None and self._ttls.get(bucket) != ttl:
            info = await self.js.stream_info(f"KV_{bucket}")
            if abs((info.config.max_age or 0) - ttl) > 1e-3:
                window = min(info.config.duplicate_window or ttl, ttl)  # NATS: it may not exceed max_age
                await self.js.update_stream(dataclasses.replace(info.config, max_age=ttl, duplicate_window=window))
            self._ttls[bucket] = ttl
        return kv

    async def objects(self) -> Any:
        """The Object Store bucket of checkpoint archives, created on first use with the stream's replicas."""
        from nats.js.api import ObjectStoreConfig
        from nats.js.errors import BucketNotFoundError

        bucket = f"{self.stream}_OBJECTS"
        try:
            return await self.js.object_store(bucket)
        except BucketNotFoundError:
            return await self.js.create_object_store(bucket, config=ObjectStoreConfig(replicas=self.replicas))

    async def put_object(self, name: str, path: Any) -> None:
        store = await self.objects()
        with open(path, "rb") as f:
            await store.put(name, f)

    async def get_object(self, name: str, dest: Any) -> bool:
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        store = await self.objects()
        try:
            with open(dest, "wb") as f:
                await store.get(name, writeinto=f)
        except (NotFoundError, ObjectNotFoundError):
            return False
        return True

    async def last(self, subject: str) -> tuple[int, bytes] | None:
        """(stream sequence, data) of the subject's last message."""
        from nats.js.errors import NotFoundError

        try:
            msg = await self.js.get_last_msg(self.stream, subject)
        except NotFoundError:
            return None
        return int(msg.seq or 0), msg.data or b""

    async def fetch(self, subject: str, start: int, last: int) -> list[tuple[int, bytes]]:
        """The subject's messages with stream sequences in [start, last], in order: a short read by direct
        gets (no consumer at all), a long one through one consumer of its own, deleted when done (a
        consumer per read left behind reaches the server's limit of consumers)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        if last - start < DIRECT_READ:
            return await self._direct(subject, start, last)
        name = "read-" + new_id().replace("-", "")
        await self.js.add_consumer(self.stream, ConsumerConfig(
            name=name, filter_subject=subject, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
            ack_policy=AckPolicy.NONE, inactive_threshold=10.0, max_ack_pending=-1, mem_storage=True,
            num_replicas=1))
        out: list[tuple[int, bytes]] = []
        try:
            sub = await self.js.pull_subscribe_bind(name, stream=self.stream)
            try:
                while not out or out[-1][0] < last:
                    for m in await sub.fetch(BATCH, timeout=10):
                        out.append((m.metadata.sequence.stream, m.data))
            finally:
                await sub.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, name)
        return out

    async def _direct(self, subject: str, start: int, last: int) -> list[tuple[int, bytes]]:
        from nats.js.errors import NotFoundError

        out: list[tuple[int, bytes]] = []
        seq = start
        while seq <= last:
            try:
                msg = await self.js.get_msg(self.stream, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                break
            got = int(msg.seq or 0)
            if got > last or not got:
                break
            out.append((got, msg.data or b""))
            seq = got + 1
        return out

    async def locate(self, subject: str, seq: int, last: int) -> int | None:
        """The stream sequence of the subject's event `seq`, by a binary search of direct gets over
        [1, last]: a fresh process reads from where its snapshot (or `tail -n`) begins, never the whole
        log before it. Cell seqs grow with stream seqs, so about log2(last) gets find it."""
        from nats.js.errors import NotFoundError

        lo, hi = 1, last
        while lo <= hi:
            mid = (lo + hi) // 2
            try:
                msg = await self.js.get_msg(self.stream, seq=mid, subject=subject, next=True, direct=True)
            except NotFoundError:
                hi = mid - 1
                continue
            got, found = int(msg.seq or 0), _seq_of(msg.data or b"")
            if found == seq:
                return got
            if found < seq:
                lo = got + 1
            else:
                hi = mid - 1
        return None

    async def publish(self, subject: str, data: bytes, msg_id: str, expected: int) -> int:
        from nats.js.errors import APIError

        try:
            ack = await self.js.publish(subject, data, headers={
                "Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(expected)})
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise _Moved() from None
            raise
        if ack.duplicate:
            raise _Moved()  # NATS saw this id already: re-read the head and let the id rule decide
        if self.replicas > 1:
            await self._no_fork(subject, expected, int(ack.seq))
        return int(ack.seq)

    async def _no_fork(self, subject: str, expected: int, ours: int) -> None:
        """On a replicated stream: the subject's next message after `expected` must be ours; another one
        there means two writers were both told their expected sequence held (a fork, nats-server#4320)."""
        from nats.js.errors import NotFoundError

        try:
            first = await self.js.get_msg(self.stream, seq=expected + 1, subject=subject, next=True, direct=True)
        except NotFoundError:
            return
        if int(first.seq or 0) != ours:
            raise CorruptLog(f"nats:{self.stream}/{subject}: fork: stream seq {first.seq} and {ours} were both "
                             f"appended after {expected}; the server lost the expected-sequence rule "
                             "(nats-server#4320: upgrade it); this append is not acknowledged")

    async def purge(self, subject: str) -> None:
        await self.js.purge_stream(self.stream, subject=subject)

    # -- the cell registry: `cell.<id>.<name>` keys list every cell, `name.<name>` keeps names unique

    async def register(self, cell_id: str, name: str) -> bool:
        """False when the name is taken."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self.kv(CELLS_BUCKET)
        try:
            await kv.create(f"name.{name}", cell_id.encode())
        except KeyWrongLastSequenceError:
            return False
        await kv.put(f"cell.{cell_id}.{name}", b"")
        return True

    async def find(self, name: str) -> str | None:
        """The id of the cell of this name, from its `name.<name>` key (one lookup, no listing)."""
        from nats.js.errors import KeyNotFoundError

        kv = await self.kv(CELLS_BUCKET)
        try:
            entry = await kv.get(f"name.{name}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def unregister(self, cell_id: str, name: str) -> None:
        kv = await self.kv(CELLS_BUCKET)
        for key in (f"cell.{cell_id}.{name}", f"name.{name}"):
            await kv.purge(key)

    async def cells(self) -> dict[str, str]:
        """Every registered cell: id -> name."""
        from nats.js.errors import NoKeysError

        kv = await self.kv(CELLS_BUCKET)
        keys: list[str] = []
        for attempt in range(5):  # nats-py's keys() can come back empty under load (nats-io/nats.py#842)
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            if keys or not (await self.js.stream_info(f"KV_{CELLS_BUCKET}")).state.messages:
                break
            await asyncio.sleep(0.05 * (attempt + 1))
        out = {}
        for key in keys:
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "cell":
                out[parts[1]] = parts[2]
        return out

    # -- leader leases: one key per cell in a bucket whose entries expire `ttl` after their last write

    async def lease(self, cell_id: str, holder: str, ttl: float, revision: int | None) -> int | None:
        """Take or renew a cell's lease; its revision, or None when another holds it."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self.kv(LEASES_BUCKET, ttl=ttl)
        try:
            if revision:
                return int(await kv.update(cell_id, holder.encode(), last=revision))
            return int(await kv.create(cell_id, holder.encode()))
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(cell_id)
        except KeyNotFoundError:
            return None
        if entry.value == holder.encode():  # ours, from before a restart
            try:
                return int(await kv.update(cell_id, holder.encode(), last=entry.revision))
            except KeyWrongLastSequenceError:
                return None
        return None

    async def release(self, cell_id: str, holder: str) -> None:
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError

        try:  # no bucket: nothing to release (and a bucket made here would have no ttl)
            kv = await self.js.key_value(LEASES_BUCKET)
            entry = await kv.get(cell_id)
        except (BucketNotFoundError, KeyNotFoundError):
            return
        if entry.value == holder.encode():
            await kv.purge(cell_id)

    async def wakeups(self, durable: str, notify: Any, stop: asyncio.Event) -> None:
        """A durable consumer per daemon over every cell's subject: each message names a cell to re-read.
        It outlives NATS errors (a server restarted, a consumer lost): each is reported in `trouble`
        and the consumer made again, while the daemon's tick re-reads every cell meanwhile."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        pause = 0.2
        while not stop.is_set():
            try:
                sub = await self.js.pull_subscribe(SUBJECTS, durable=durable, stream=self.stream,
                                                   config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW,
                                                                         ack_policy=AckPolicy.NONE,
                                                                         max_ack_pending=-1))
                while not stop.is_set():
                    try:
                        msgs = await sub.fetch(256, timeout=0.5)
                    except (TimeoutError, NatsTimeout):
                        if self.trouble.startswith("watch: "):
                            self.trouble = ""
                        continue
                    pause, self.trouble = 0.2, "" if self.trouble.startswith("watch: ") else self.trouble
                    cells = {m.subject.split(".")[2] for m in msgs if m.subject.count(".") == 3}
                    if cells:
                        notify(cells)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever NATS says, the watch goes on
                self.trouble = f"watch: {type(exc).__name__}: {exc}".rstrip(": ")
                log.warning("nats %s: following the cells: %s; again in %.1f s", self.url, self.trouble, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(pause * 2, 5.0)


class _Moved(Exception):
    """Another writer appended first: re-read and try again."""


class _Seq(msgspec.Struct):
    seq: int


_seq_decoder = msgspec.json.Decoder(_Seq)


def _seq_of(data: bytes) -> int:
    """An event's seq without decoding the rest of it; a message that is no event sorts first."""
    try:
        return _seq_decoder.decode(data).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return -1


class NatsLog(LogBackend):
    """A cell's log as the messages of one JetStream subject."""

    def __init__(self, nats: Nats, cell: str, *, max_event_bytes: int = 1 << 20) -> None:
        super().__init__()
        self.nats = nats
        self.cell = cell
        self.subject = subject_of(cell)
        self.max_event_bytes = max_event_bytes
        self.path = f"nats:{nats.stream}/{self.subject}"
        self._head = Head(0, ZERO_HASH)
        self._last = 0  # stream sequence of the head event
        self._window = IdWindow()
        self._window_at = 0  # stream sequence up to which the id window is filled
        self._index: dict[int, int] = {}  # cell seq -> stream seq, as far as read

    # -- reading --------------------------------------------------------------------------

    def _fetch_head(self) -> Head:
        got = self.nats.call(self.nats.last, self.subject)
        if got is None:
            self._head, self._last = Head(0, ZERO_HASH), 0
            return self._head
        stream_seq, data = got
        try:
            event = decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptLog(f"{self.path}: corrupt last message (stream seq {stream_seq}): {exc}") from None
        self._head, self._last = Head(event.seq, hashlib.sha256(data).hexdigest()), stream_seq
        self._index[event.seq] = stream_seq
        return self._head

    def head(self) -> Head:
        with self._thread_lock:
            return self._fetch_head()

    def _messages(self, since: int, until: int | None) -> Iterator[tuple[int, bytes]]:
        """(stream seq, data) from the cell's event `since` (the chain's anchor) or the start, in batches."""
        last = self.nats.call(self.nats.last, self.subject)
        if last is None:
            return
        end = min(last[0], self._index.get(until, last[0])) if until is not None else last[0]
        start = 1
        if since > 0:
            found = self._index.get(since) or self.nats.call(self.nats.locate, self.subject, since, last[0])
            if found is None:
                return  # past the head: nothing after it yet (as the file backend answers)
            start = self._index[since] = found
        while start <= end:
            batch = self.nats.call(self.nats.fetch, self.subject, start, end)
            if not batch:
                return
            yield from (m for m in batch if m[0] <= end)
            start = batch[-1][0] + 1

    def read_raw(self, since: int = 0, until: int | None = None) -> Iterator[tuple[Event, bytes]]:
        prev_seq: int | None = 0 if since == 0 else None
        prev_hash = ZERO_HASH
        for stream_seq, data in self._messages(since, until):
            try:
                event = decode_event(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                where = prev_seq + 1 if prev_seq is not None else "?"
                raise CorruptLog(f"{self.path}:{where}: corrupt log at seq {where} "
                                 f"(stream seq {stream_seq}): {exc}") from None
            self._index[event.seq] = stream_seq
            if prev_seq is None:  # an anchor when reading from the middle
                if event.seq > since:
                    raise CorruptLog(f"{self.path}: seq {since} not found (found {event.seq})")
                if event.seq == since:
                    prev_seq, prev_hash = event.seq, hashlib.sha256(data).hexdigest()
                continue
            check_link(self.path, event, prev_seq, prev_hash)
            if until is not None and event.seq > until:
                return
            prev_seq, prev_hash = event.seq, hashlib.sha256(data).hexdigest()
            yield event, data

    def follow(self, since: int = 0, stop: threading.Event | None = None) -> Iterator[tuple[Event, bytes]]:
        seq = since
        while stop is None or not stop.is_set():
            for event, data in self.read_raw(seq):
                seq = event.seq
                yield event, data
            if stop is not None:
                stop.wait(0.05)
            else:
                time.sleep(0.05)

    # -- writing --------------------------------------------------------------------------

    def _fill_window(self) -> None:
        """The ids of the cell's last 10,000 events, read since the last look."""
        if self._last <= self._window_at:
            return
        for stream_seq, data in self.nats.call(self.nats.fetch, self.subject, self._window_at + 1, self._last):
            event = decode_event(data)
            self._window.add(event.id, event.seq)
            self._index[event.seq] = stream_seq
        self._window_at = self._last

    def append_many(
        self, drafts: Sequence[Event], *, expected_seq: int | None = None, admit: Admit | None = None
    ) -> list[Appended]:
        drafts = self.checked(drafts)
        written: list[Appended] = []
        pending = list(drafts)
        with self._thread_lock:
            for _ in range(1000):
                head = self._fetch_head()
                if any(d.id for d in pending):
                    self._fill_window()
                    if not written:
                        repeats = self._repeats(pending, self._window)
                        if repeats is not None:
                            return repeats
                if not written and expected_seq is not None and expected_seq != head.seq:
                    raise Conflict(f"expected seq {expected_seq}, but the log is at seq {head.seq}")
                todo = admit(head, list(pending)) if admit else list(pending)
                events, lines, _ = stamp(todo, head, self.cell, self.max_event_bytes)
                try:
                    for draft, event, line in zip(todo, events, lines):
                        msg_id = f"{event.id}:{event.seq}"
                        stream_seq = self.nats.call(self.nats.publish, self.subject, line, msg_id, self._last)
                        self._last, self._head = stream_seq, Head(event.seq, hashlib.sha256(line).hexdigest())
                        self._index[event.seq] = stream_seq
                        written.append(Appended(event.seq, event))
                        pending = [d for d in pending if d is not draft]  # follow-ups were never pending
                    return written
                except _Moved:
                    if not pending:
                        return written
                    continue  # someone appended between two of ours: re-admit what is left
            raise Conflict(f"{self.path}: gave up after 1000 concurrent retries")

    def import_lines(self, lines: Sequence[bytes]) -> None:
        """Publish an exported log as it is (same bytes, seqs, ids and chain) into an empty subject."""
        with self._thread_lock:
            if self._fetch_head().seq:
                raise Conflict(f"{self.path} is not empty")
            batch = new_id()  # a cell destroyed and imported again within NATS's dedup window is new to it
            for line in lines:
                event = decode_event(line)
                try:
                    self._last = self.nats.call(self.nats.publish, self.subject, line, f"{batch}:{event.seq}",
                                                                 self._last)
                except _Moved:
                    raise Conflict(f"{self.path} was written to during the import") from None
