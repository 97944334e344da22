"""Stop promptly during a consumer-group rebalance: leave the group so a held join returns.

Why: aiokafka's ``consumer.stop()`` first lets its coordination task finish. In a rebalance
that task waits in a JoinGroup (or SyncGroup) request, and the broker holds that request
until every member of the group has rejoined — up to the slowest member's rebalance timeout —
or until our request times out (40 s). A worker told to stop in that state took 30-40 s per
consumer group (the ingest group, then faust's), with nothing left to do: its revocation
callbacks had already snapshotted and committed before it rejoined.

:func:`leave_when_closing` runs next to ``stop()`` on the consumer's loop: once the
consumer is closing, and only when its coordination is past the revocation callbacks (so
everything safe to commit was committed by them) and still in the join, it sends a
LeaveGroup on another connection to the coordinator (the broker answers one request per
connection at a time, and the held join is the coordination connection's). The broker then
answers the held join at once (UNKNOWN_MEMBER_ID), the
coordination task sees the consumer closing and ends, and ``stop()`` finishes. aiokafka has
no public call for this: the attributes used are checked, and without them this waits as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.05  # how often a closing consumer's coordination is looked at
GRACE_SECONDS = 0.3  # a coordination task not in a join ends on its own within this
T = TypeVar("T")


def _coordinator(consumer: Any) -> Any | None:
    coord = getattr(consumer, "_coordinator", None)
    needed = ("_closing", "_coordination_task", "_performed_join_prepare", "_client",
              "coordinator_id", "member_id", "group_id")
    return coord if coord is not None and all(hasattr(coord, a) for a in needed) else None


def in_join(consumer: Any) -> bool:
    """Whether the consumer's group coordination waits in a rebalance's join (after its
    revocation callbacks, before the new assignment is complete)."""
    coord = _coordinator(consumer)
    if coord is None:
        return False
    task = coord._coordination_task
    return bool(task is not None and not task.done() and coord._performed_join_prepare)


async def leave_when_closing(consumer: Any) -> bool:
    """On the consumer's loop, alongside ``consumer.stop()``: once it is closing, send one
    LeaveGroup if its coordination is held in a join (see the module docstring). Returns
    whether it left."""
    coord = _coordinator(consumer)
    if coord is None:
        return False
    await asyncio.shield(coord._closing)
    waited = 0.0
    while not coord._coordination_task.done():
        if coord._performed_join_prepare and waited >= GRACE_SECONDS:
            log.info("stopping in a rebalance of group %s: leaving it so the held join "
                     "returns", coord.group_id)
            # not on the coordination connection: the broker answers one request per
            # connection at a time, and the held join is that connection's request
            try:
                await coord._client.send(coord.coordinator_id,
                                         LeaveGroupRequest(coord.group_id, coord.member_id))
            except KafkaError as exc:  # the coordinator's own leave will try again
                log.warning("leaving group %s failed: %r", coord.group_id, exc)
            return True
        await asyncio.sleep(CHECK_SECONDS)
        waited += CHECK_SECONDS
    return False


async def stop_consumer(consumer: Any, stop: Awaitable[T]) -> T:
    """Await ``stop`` (the consumer's stop, on this loop) with :func:`leave_when_closing`
    running alongside."""
    watch = asyncio.ensure_future(leave_when_closing(consumer))
    try:
        return await stop
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watch


def watch_in_thread(consumer: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """:func:`leave_when_closing` for a consumer living on another thread's loop (faust's
    consumer thread); returns a concurrent future to cancel once the stop is done."""
    return asyncio.run_coroutine_threadsafe(leave_when_closing(consumer), loop)


__all__ = ["in_join", "leave_when_closing", "stop_consumer", "watch_in_thread"]
