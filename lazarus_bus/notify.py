"""Notifications of deaths, revivals, approval requests and escalations: rate-limited, retried, never blocking."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import msgspec

from .config import NotifyConfig
from .events import (
    AgentDeclaredDead,
    AgentRevived,
    BudgetExceeded,
    Event,
    RevivalApprovalRequested,
    RevivalPlanned,
    encode_event,
)

__all__ = ["Notifier", "kind_of"]

log = logging.getLogger(__name__)
RETRIES = (1.0, 2.0, 4.0, 8.0)  # seconds between attempts, then the notification is given up (and logged)


def kind_of(event: Event) -> str | None:
    """Which notifications an event is: a death, a revival (so a channel can close what it opened for the
    death), an approval request or an escalation."""
    match event:
        case AgentDeclaredDead():
            return "death"
        case AgentRevived():
            return "revival"
        case RevivalApprovalRequested():
            return "approval"
        case RevivalPlanned(action="escalated"):
            return "escalation"
        case BudgetExceeded(on_exceed="stop"):
            return "escalation"  # `stop` escalates; `pause` and `ask` file an approval request instead
    return None


class Notifier:
    """Sends each notable event to every configured channel, in the background."""

    def __init__(self, config: NotifyConfig, retries: tuple[float, ...] = RETRIES) -> None:
        self.config = config
        self.retries = retries
        self.last: dict[tuple[str, str, str], float] = {}
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        # one agent's notifications reach each channel in the order of its events: a revival's command runs
        # after its death's, so what the death opened is there to close (other agents' never wait on it)
        self._order: dict[tuple[str, str, str], asyncio.Lock] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.config.webhook or self.config.command)

    def offer(self, event: Event, now: float) -> bool:
        """Queue a notification unless the same agent and kind had one within `min_interval`."""
        kind = kind_of(event)
        if kind is None or not self.enabled:
            return False
        key = (event.cell, str(getattr(event, "agent", "")), kind)
        if kind != "escalation" and now - self.last.get(key, float("-inf")) < self.config.min_interval:
            return False
        self.last[key] = now
        body = encode_event(event)
        agent = str(getattr(event, "substitute_for", None) or getattr(event, "agent", ""))
        if self.config.webhook:
            self._spawn(self._in_order((event.cell, agent, "webhook"), self._deliver("webhook", self._post, body)))
        if self.config.command:
            self._spawn(self._in_order((event.cell, agent, "command"), self._deliver("command", self._run, body)))
        return True

    async def _in_order(self, key: tuple[str, str, str], delivery: Any) -> None:
        lock = self._order.setdefault(key, asyncio.Lock())
        async with lock:
            await delivery

    def alert(self, cell: str, kind: str, message: str) -> bool:
        """A notification of the root's own state (a cell found corrupt): once per cell and kind."""
        if not self.enabled or (cell, "", kind) in self.last:
            return False
        self.last[(cell, "", kind)] = 0.0
        body = msgspec.json.encode({"type": f"lazarus.{kind}", "cell": cell, "message": message})
        if self.config.webhook:
            self._spawn(self._deliver("webhook", self._post, body))
        if self.config.command:
            self._spawn(self._deliver("command", self._run, body))
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, channel: str, send: Any, body: bytes) -> None:
        for attempt, pause in enumerate((*self.retries, None), start=1):
            try:
                await send(body)
                self.sent += 1
                return
            except Exception as exc:  # noqa: BLE001 - a channel's failure is logged, never fatal
                log.warning("notify %s failed (attempt %d): %s", channel, attempt, exc)
                if pause is None:
                    self.failed += 1
                    return
                await asyncio.sleep(pause)

    async def _post(self, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._session.post(self.config.webhook, data=body,
                                      headers={"Content-Type": "application/json"}) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"HTTP {resp.status}")

    async def _run(self, body: bytes) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.config.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(body + b"\n"), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("command timed out after 30 s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"command exited {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")

    async def close(self, wait: float = 2.0) -> None:
        """Give notifications in flight a moment, then drop the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=wait)
            for t in list(self._tasks):
                t.cancel()
        if self._session is not None:
            await self._session.close()
