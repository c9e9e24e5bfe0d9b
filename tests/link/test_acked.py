"""`agent.link.mqtt._acked`, the bound the link puts around every aiomqtt call it awaits.

On Python 3.11 asyncio.wait_for (which aiomqtt uses for its own timeouts) returns the result
when the awaited answer and a cancellation arrive in the same loop iteration, and the
cancellation is lost (CPython gh-86296). The link was cancelled just as its SUBACK came back
and ran on, connected, so `await task` never returned. These tests build exactly that
coincidence.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from agent.link.mqtt import _acked


async def _answer(fut: asyncio.Future[str]) -> str:
    return await fut  # what aiomqtt does with timeout=math.inf


async def test_a_cancel_that_lands_with_the_answer_is_not_lost() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_acked(_answer(fut), 5.0))
    await asyncio.sleep(0)  # the task now waits for the answer
    fut.set_result("SUBACK")  # the answer, and in the same iteration the cancel
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_answer_is_returned_when_nothing_interferes() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_acked(_answer(fut), 5.0))
    await asyncio.sleep(0)
    fut.set_result("PUBACK")
    assert await task == "PUBACK"


async def test_no_answer_in_time_is_a_link_error() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await _acked(_answer(fut), 0.05)
    assert fut.cancelled()  # nothing is left waiting
