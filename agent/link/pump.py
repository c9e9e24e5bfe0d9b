"""The outbox pump: QoS 1 messages leave the outbox in order, a window of them in flight.

`drain_outbox` runs for one connection. Before each batch it lets the link say what does not
queue (a corrective `online`, the latest health sample, drop reports); then it publishes the
outbox's pending messages in order with at most `WINDOW` unacknowledged, and acknowledges
each in the outbox only when its publish returned (the broker's PUBACK). Delivery tasks start
in creation order, so the client sends in outbox order. With nothing pending it sleeps until
`wake` is set. No aiomqtt here: `publish` is the link's, bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent import _compat
from agent.link.messages import Outgoing
from agent.link.outbox import Outbox

__all__ = ["WINDOW", "drain_outbox"]

WINDOW = 20  # QoS 1 publishes in flight: paho's default and Mosquitto's receive maximum


async def drain_outbox(
    outbox: Outbox,
    publish: Callable[[Outgoing], Awaitable[object]],
    *,
    before: Callable[[], Awaitable[None]],
    wake: asyncio.Event,
) -> None:
    """Publish the outbox until cancelled or a publish fails (which ends the TaskGroup)."""
    window, cursor = asyncio.Semaphore(WINDOW), 0
    async with _compat.TaskGroup() as tg:
        while True:
            await before()
            batch = outbox.peek(2 * WINDOW, after=cursor)
            if not batch:
                wake.clear()
                await wake.wait()
                continue
            for msg in batch:
                await window.acquire()
                cursor = msg.id
                if not outbox.is_pending(msg.id):  # dropped meanwhile
                    window.release()
                    continue
                tg.create_task(_deliver(outbox, publish, msg, window))


async def _deliver(
    outbox: Outbox,
    publish: Callable[[Outgoing], Awaitable[object]],
    msg: Outgoing,
    window: asyncio.Semaphore,
) -> None:
    try:
        await publish(msg)
    finally:
        window.release()
    outbox.ack(msg.id)
