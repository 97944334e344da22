"""The faust app: one agent on the internal ``flows`` topic feeding the stateful stage.

Messages there are whole Arrow batches (hundreds to thousands of flows), so faust's
per-message cost (~55 µs) is amortised. Acks are manual (``noack``): the stage acknowledges
a message only when a snapshot covers it, so faust commits nothing the store and the
snapshot do not already hold. faust tables are not used: the stage's snapshot topic is the
changelog (see docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import faust

from pipeline.config import KafkaSettings, TopicSettings
from pipeline.stream.clients import MAX_MESSAGE_BYTES, faust_credentials
from pipeline.stream.leave import watch_in_thread
from pipeline.stream.stateful import StatefulStage

log = logging.getLogger(__name__)


class FaustControl:
    """:class:`~pipeline.stream.stateful.ConsumerControl` over the faust consumer."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self.app = app
        self.topic = topic

    def _tp(self, partition: int) -> Any:
        from faust.types import TP

        return TP(self.topic, partition)

    def owns(self, partition: int) -> bool:
        return self._tp(partition) in self.app.consumer.assignment()

    def highwater(self, partition: int) -> int | None:
        try:
            high = self.app.consumer.highwater(self._tp(partition))
        except Exception:  # not assigned / not fetched yet
            return None
        return int(high) if high is not None else None


def create_app(kafka: KafkaSettings, topics: TopicSettings, stage: StatefulStage, *,
               app_id: str, datadir: Path) -> faust.App:
    """A faust app (consumer group ``app_id``) whose only agent feeds ``stage``; start it
    with ``await app.start()``."""
    k = kafka
    brokers = [f"kafka://{b.strip()}" for b in k.bootstrap.split(",") if b.strip()]
    session = max(6.0, k.session_timeout)
    app = faust.App(
        app_id,
        broker=brokers,
        broker_credentials=faust_credentials(k),
        broker_client_id=k.client_id,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, session / 5),
        broker_rebalance_timeout=session * 3,
        broker_request_timeout=max(40.0, session * 4),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        stream_wait_empty=False,  # acks come from snapshots, not from finishing a message
        topic_disable_leader=True,
        topic_allow_declare=False,  # the worker creates its topics with their configs
        datadir=str(datadir),
        autodiscover=False,
    )
    topic = app.topic(topics.flows, value_serializer="raw", key_serializer="raw",
                      partitions=topics.flows_partitions)
    stage.control = FaustControl(app, topics.flows)

    async def stateful(stream: Any) -> None:
        async for event in stream.noack().events():
            msg = event.message

            async def ack(event: Any = event) -> None:
                await stream.ack(event)

            try:
                await stage.handle(msg.partition, msg.offset, event.value, ack)
            except Exception as exc:  # a bug: stop the worker, restart resumes from snapshots
                log.exception("stateful stage failed on partition %d offset %d",
                              msg.partition, msg.offset)
                await app.crash(exc)
                return
            # the Arrow bytes are no longer needed, but the event waits for its ack
            msg.value = event.value = None

    app.agent(topic, name="segflow.stateful")(stateful)

    restoring: set[asyncio.Future[None]] = set()

    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == topics.flows}
        stage.assigned(mine)
        if mine:  # restore in the background; the rebalance callback must return quickly
            task = asyncio.ensure_future(stage.on_assigned(mine))
            restoring.add(task)
            task.add_done_callback(restoring.discard)

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == topics.flows}
        if mine:
            await stage.on_revoked(mine)

    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    return app


async def stop_app(app: faust.App) -> None:
    """``app.stop()``, leaving the group at once if the stop finds faust's consumer held in
    a rebalance's join (:mod:`pipeline.stream.leave`)."""
    thread = getattr(getattr(app, "consumer", None), "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    loop = getattr(thread, "thread_loop", None)
    watch = watch_in_thread(consumer, loop) if consumer is not None and loop is not None \
        else None
    try:
        await app.stop()
    finally:
        if watch is not None:
            watch.cancel()


__all__ = ["FaustControl", "create_app", "stop_app"]
