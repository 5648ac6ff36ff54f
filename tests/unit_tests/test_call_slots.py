"""CallSlots, the concurrency limit's slots (``models._limits``), against the behaviour
users of ``asyncio.Semaphore`` rely on.

The tests marked "CPython" are adapted from CPython 3.11.7's
``Lib/test/test_asyncio/test_locks.py`` (``SemaphoreTests``), under the Python Software
Foundation License (https://docs.python.org/3/license.html): rewritten as pytest
functions, with ``asyncio.Semaphore`` replaced by ``CallSlots`` and its private
``_value`` by the public ``free``. One expectation differs, and says why where it does.
"""

from __future__ import annotations

import asyncio

import pytest

from afnio_langchain.models import concurrency_limit
from afnio_langchain.models._limits import CallSlots, call_slots


def test_zero_slots_are_locked():  # CPython: test_initial_value_zero
    assert CallSlots(0).locked()


def test_a_negative_limit_is_refused():  # CPython: test_semaphore_value
    with pytest.raises(ValueError, match="limit must be >= 0"):
        CallSlots(-1)


async def test_acquire_waits_when_no_slot_is_free():  # CPython: test_acquire
    sem = CallSlots(3)
    result: list[int] = []
    assert await sem.acquire()
    assert await sem.acquire()
    assert not sem.locked()

    async def take(tag: int) -> bool:
        await sem.acquire()
        result.append(tag)
        return True

    t1 = asyncio.create_task(take(1))
    t2 = asyncio.create_task(take(2))
    t3 = asyncio.create_task(take(3))
    await asyncio.sleep(0)
    assert result == [1]
    assert sem.locked()
    assert len(sem._waiters) == 2
    assert sem.free == 0

    t4 = asyncio.create_task(take(4))
    sem.release()
    sem.release()
    assert sem.free == 0
    await asyncio.sleep(0)
    assert sem.free == 0
    assert len(result) == 3
    assert sem.locked()
    assert len(sem._waiters) == 1
    assert t1.done() and t1.result()
    assert len([t for t in (t2, t3, t4) if t.done() and t.result()]) == 2

    sem.release()
    await asyncio.gather(t2, t3, t4)


async def test_a_cancelled_waiter_leaves_the_queue():  # CPython: test_acquire_cancel
    sem = CallSlots(1)
    await sem.acquire()
    acquire = asyncio.create_task(sem.acquire())
    asyncio.get_running_loop().call_soon(acquire.cancel)
    with pytest.raises(asyncio.CancelledError):
        await acquire
    assert not sem._waiters or all(w.done() for w in sem._waiters)
    sem.release()
    assert sem.free == 1  # the cancelled waiter took nothing


async def test_waiters_cancelled_before_a_release_are_passed_over():
    # CPython: test_acquire_cancel_before_awoken
    sem = CallSlots(0)
    t1, t2, t3, t4 = (asyncio.create_task(sem.acquire()) for _ in range(4))
    await asyncio.sleep(0)
    t1.cancel()
    t2.cancel()
    sem.release()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sum(t.done() for t in (t3, t4)) == 1
    assert t3.done() and not t4.done()
    t3.cancel()
    t4.cancel()
    await asyncio.sleep(0)


async def test_a_release_reaches_the_waiter_behind_a_cancelled_one():  # CPython: test_acquire_hang
    sem = CallSlots(0)
    t1 = asyncio.create_task(sem.acquire())
    t2 = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)
    t1.cancel()
    sem.release()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sem.locked()
    assert t2.done()


async def test_a_slot_handed_to_a_cancelled_task_is_passed_on():  # CPython: test_acquire_no_hang
    sem = CallSlots(1)

    async def first() -> None:
        async with sem:
            await asyncio.sleep(0)
        second.cancel()  # second was handed the slot and has not run yet

    async def never() -> None:
        async with sem:
            raise AssertionError("a cancelled task must not run its block")

    one = asyncio.create_task(first())
    second = asyncio.create_task(never())
    r1, r2 = await asyncio.gather(one, second, return_exceptions=True)
    assert r1 is None
    assert isinstance(r2, asyncio.CancelledError)
    await asyncio.wait_for(sem.acquire(), timeout=1.0)


async def test_release_without_waiters_frees_a_slot():  # CPython: test_release_no_waiters
    sem = CallSlots(1)
    await sem.acquire()
    assert sem.locked()
    sem.release()
    assert not sem.locked()


async def test_slots_are_given_first_come_first_served():  # CPython: test_acquire_fifo_order
    sem = CallSlots(1)
    result: list[str] = []

    async def twice(tag: str) -> None:
        for n in (1, 2):
            async with sem:
                result.append(f"{tag}_{n}")
                await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as group:
        for tag in ("c1", "c2", "c3"):
            group.create_task(twice(tag))
    assert result == ["c1_1", "c2_1", "c3_1", "c1_2", "c2_2", "c3_2"]


async def test_a_released_slot_goes_to_the_longest_waiter():  # CPython: test_acquire_fifo_order_2
    sem = CallSlots(1)
    result: list[int] = []
    granted: list[int] = []

    async def c1() -> None:
        await sem.acquire()
        result.append(1)

    async def c2() -> None:
        await sem.acquire()
        result.append(2)
        sem.release()
        granted.append(len(sem._waiters))  # c3 is already served: nobody to wait behind
        await sem.acquire()
        result.append(4)

    async def c3() -> None:
        await sem.acquire()
        result.append(3)

    tasks = [asyncio.create_task(c()) for c in (c1, c2, c3)]
    await asyncio.sleep(0)
    sem.release()
    sem.release()
    await asyncio.gather(*tasks)
    # asyncio.Semaphore gives [1, 2, 3, 4]: its woken waiter still counts as waiting
    # until it runs, so c2's second acquire queues behind c3. Here the slot is c3's
    # from the release on, so c2 takes the slot it gave back at once; c3 still got
    # its slot before c2's second one.
    assert granted == [0]
    assert sorted(result) == [1, 2, 3, 4]
    assert result[:2] == [1, 2]


async def test_a_cancelled_waiter_gets_no_slot():  # CPython: test_acquire_fifo_order_3
    sem = CallSlots(0)
    result: list[int] = []

    async def take(tag: int) -> None:
        await sem.acquire()
        result.append(tag)

    tasks = [asyncio.create_task(take(tag)) for tag in (1, 2, 3)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.sleep(0)
    sem.release()
    sem.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert result == [2, 3]


# -- this package's own ---------------------------------------------------------------


async def test_an_error_in_the_block_gives_the_slot_back():
    sem = CallSlots(1)
    with pytest.raises(RuntimeError):
        async with sem:
            raise RuntimeError("the call failed")
    assert sem.free == 1 and not sem.locked()


async def test_a_newcomer_never_overtakes_the_queue():
    sem = CallSlots(1)
    order: list[str] = []
    await sem.acquire()

    async def take(tag: str) -> None:
        async with sem:
            order.append(tag)

    waiting = asyncio.create_task(take("waiting"))
    await asyncio.sleep(0)
    sem.release()  # handed to "waiting", which has not run yet
    newcomer = asyncio.create_task(take("newcomer"))
    await asyncio.gather(waiting, newcomer)
    assert order == ["waiting", "newcomer"]
    assert sem.free == 1


async def test_no_more_calls_than_the_limit_are_in_flight_under_cancellation():
    in_flight = most = 0

    async def call() -> None:
        nonlocal in_flight, most
        async with call_slots():
            in_flight += 1
            most = max(most, in_flight)
            try:
                await asyncio.sleep(0.001)
            finally:
                in_flight -= 1

    with concurrency_limit(3):
        tasks = [asyncio.create_task(call()) for _ in range(40)]
        await asyncio.sleep(0.002)
        for task in tasks[5::4]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        slots = call_slots()
    assert most == 3
    assert slots.free == 3 and not slots._waiters
