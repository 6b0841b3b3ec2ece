"""Probes and other managers' commands, run on a loop of their own in a thread: a hung probe or a slow
`systemctl restart` never stalls the daemon's event loop, and each probe is its own task with its own
deadline, so one that hangs never delays another."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from .probes import ProbeSpec

__all__ = ["Outside", "Report", "check", "run_argv"]

log = logging.getLogger(__name__)
OUTPUT_TAIL = 2048  # bytes of a command's output kept in `detail`
T = TypeVar("T")
# (cell, agent, token, ok, failures in a row, detail): called from the outside thread
Report = Callable[[str, str, str, bool, int, dict[str, Any]], None]


async def _http(spec: ProbeSpec) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(spec.url, allow_redirects=False) as resp:
        return {"status": resp.status, "ok": 200 <= resp.status < 400}


async def _tcp(spec: ProbeSpec) -> dict[str, Any]:
    _, writer = await asyncio.open_connection(spec.host, spec.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return {"ok": True}


async def run_argv(argv: list[str], timeout: float, *, reap: bool = False) -> dict[str, Any]:
    """Run a command in its own session, its output in a file (a server it leaves in the background keeps
    that file, not a pipe the wait would hang on); killed, whole group, at the deadline. `reap` (probes)
    also ends whatever it left in its session; a restart command's services are left alone."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return {"argv": argv, "returncode": None, "error": f"cannot run {argv[0]}: {exc.strerror or exc}",
                    "output": "", "seconds": 0.0}
        result: dict[str, Any] = {"argv": argv}
        try:
            result["returncode"] = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            result.update(returncode=None, error=f"timed out after {timeout:g} s")
            reap = True
        finally:
            if reap or proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
        out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL))
        tail = out.read().decode(errors="replace")
    return {**result, "output": tail, "seconds": round(time.monotonic() - started, 3)}


async def check(spec: ProbeSpec) -> tuple[bool, dict[str, Any]]:
    """One probe under one deadline (`timeout`): (ok, what it saw)."""
    where = spec.url or " ".join(spec.argv)
    try:
        if spec.kind == "cmd":
            done = await run_argv(spec.argv, spec.timeout, reap=True)
            ok = done["returncode"] == 0
            return ok, {"probe": where, "returncode": done["returncode"], "output": done["output"][-500:],
                        **({"error": done["error"]} if "error" in done else {})}
        seen = await asyncio.wait_for(_http(spec) if spec.kind == "http" else _tcp(spec), spec.timeout)
        ok = bool(seen.pop("ok"))
        return ok, {"probe": where, **seen, **({} if ok else {"error": f"HTTP status {seen.get('status')}"})}
    except TimeoutError:
        return False, {"probe": where, "error": f"timed out after {spec.timeout:g} s"}
    except (OSError, aiohttp.ClientError) as exc:
        return False, {"probe": where, "error": str(exc) or type(exc).__name__}


class Outside:
    """The thread and loop where probes and commands run, and the probe task of each agent."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lazarus-outside", daemon=True)
        self._thread.start()
        self._probes: dict[tuple[str, str], tuple[str, concurrent.futures.Future[None]]] = {}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # -- probes -------------------------------------------------------------------------

    def sync(self, wanted: dict[tuple[str, str], tuple[str, ProbeSpec]], report: Report) -> None:
        """Probe exactly the wanted agents: a new token (a new start, a changed probe) starts afresh,
        with its initial delay and no failures counted."""
        for key, (token, fut) in list(self._probes.items()):
            if wanted.get(key, ("",))[0] != token or fut.done():
                fut.cancel()
                del self._probes[key]
        for key, (token, spec) in wanted.items():
            if key not in self._probes:
                self._probes[key] = (token, self.submit(self._probe_loop(key, token, spec, report)))

    @property
    def probing(self) -> int:
        return len(self._probes)

    async def _probe_loop(self, key: tuple[str, str], token: str, spec: ProbeSpec, report: Report) -> None:
        await asyncio.sleep(spec.initial_delay)
        failures = 0
        while True:
            started = time.monotonic()
            ok, detail = await check(spec)
            failures = 0 if ok else failures + 1
            try:
                report(key[0], key[1], token, ok, failures, detail)
            except RuntimeError:  # the daemon's loop is closed: it is stopping
                return
            await asyncio.sleep(max(0.0, spec.period - (time.monotonic() - started)))

    def close(self) -> None:
        """Every probe cancelled, the loop stopped (commands in flight are abandoned with it)."""
        for _, fut in self._probes.values():
            fut.cancel()
        self._probes.clear()

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.submit(_cancel_all()).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
