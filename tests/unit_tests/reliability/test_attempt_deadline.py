"""The deadline of one model-call attempt (``models._retry.within``) keeps the
semantics of ``asyncio.timeout``, which it replaces on the hot path: it tells its own
cancellation from a caller's, and leaves the task's cancel count as it found it."""

from __future__ import annotations

import asyncio

import pytest

from afnio_langchain.models import ReplyTimeoutError
from afnio_langchain.models._retry import RetryPolicy, within


def _first_attempt_of_a_call(func, seconds, what):
    return RetryPolicy(max_attempts=1).call(func, timeout=seconds, what=what)


@pytest.fixture(params=[within, _first_attempt_of_a_call], ids=["within", "retry_policy_call"])
def deadline(request):
    """Both ways an attempt gets its deadline: ``within``, and the first attempt of
    ``RetryPolicy.call``, which holds the deadline itself (``AttemptDeadline``)."""
    return request.param


async def _slow() -> str:
    await asyncio.sleep(5)
    return "late"


async def test_an_attempt_past_its_deadline_raises_reply_timeout_and_the_task_goes_on(deadline):
    with pytest.raises(ReplyTimeoutError, match="model 'm' gave no complete reply within 0.05 s"):
        await deadline(_slow, 0.05, "model 'm'")
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancel left pending for the task's next await


async def test_a_finished_attempt_leaves_no_timer_behind(deadline):
    async def quick() -> str:
        return "ok"

    assert [await deadline(quick, 0.02, "m") for _ in range(50)] == ["ok"] * 50
    await asyncio.sleep(0.06)  # past every deadline: none fires into this task


async def test_a_timeout_error_of_the_attempt_itself_passes_through_unchanged(deadline):
    class OwnTimeout(TimeoutError):
        pass

    async def raises() -> str:
        raise OwnTimeout("the client's own timeout")

    with pytest.raises(OwnTimeout):
        await deadline(raises, 5, "m")


async def test_a_callers_cancel_is_a_cancel_not_a_timeout(deadline):
    started = asyncio.Event()

    async def waits() -> str:
        started.set()
        return await _slow()

    task = asyncio.create_task(deadline(waits, 5, "m"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_timeout_shorter_than_the_deadline_is_the_outer_ones(deadline):
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.05):
            await deadline(_slow, 5, "m")
    assert not isinstance(caught.value, ReplyTimeoutError)


async def test_an_outer_cancel_arriving_after_the_deadline_fired_stays_a_cancel(deadline):
    async def swallows_then_waits() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(5)  # cancelled again below, by the caller
        return "never"

    task = asyncio.create_task(deadline(swallows_then_waits, 0.02, "m"))
    await asyncio.sleep(0.06)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_attempt_that_ignores_the_deadline_gets_its_task_cancel_count_back(deadline):
    async def ignores() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass
        return "finished anyway"

    assert await deadline(ignores, 0.02, "m") == "finished anyway"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


# -- one timer per loop for every attempt's deadline (models._deadlines) --------------


async def _timed(seconds: float, sleep: float) -> str:
    async def attempt() -> str:
        await asyncio.sleep(sleep)
        return "done"

    try:
        return await within(attempt, seconds, "m")
    except ReplyTimeoutError:
        return "timed out"


async def test_attempts_with_mixed_deadlines_on_one_loop_each_get_their_own():
    # A long deadline set first, then shorter ones: each times out at its own deadline,
    # not at the first one's, and the attempts that end in time are untouched.
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await asyncio.gather(
        _timed(5.0, 0.15),  # ends in time
        _timed(0.05, 5.0),  # its deadline comes first, though it was set after
        _timed(0.1, 5.0),
        _timed(5.0, 0.01),
        _timed(0.2, 0.12),  # ends in time, just before its deadline
    )
    assert results == ["done", "timed out", "timed out", "done", "done"]
    assert loop.time() - began < 1.0


async def test_a_deadline_set_later_but_due_sooner_moves_the_shared_timer():
    far = asyncio.ensure_future(_timed(30.0, 10.0))
    await asyncio.sleep(0)  # the far deadline is set first
    began = asyncio.get_running_loop().time()
    assert await _timed(0.05, 10.0) == "timed out"
    assert asyncio.get_running_loop().time() - began < 1.0
    far.cancel()
    with pytest.raises(asyncio.CancelledError):
        await far


async def test_finished_attempts_leave_nothing_watched_and_a_timer_fires_harmlessly():
    from afnio_langchain.models._deadlines import watchdog

    async def quick() -> str:
        return "ok"

    deadlines = watchdog(asyncio.get_running_loop())
    assert [await within(quick, 0.02, "m") for _ in range(100)] == ["ok"] * 100
    assert deadlines.due == {}
    await asyncio.sleep(0.06)  # the timer of the first deadline fires with none due
    assert deadlines.due == {} and deadlines.timer is None
    assert await _timed(0.03, 5.0) == "timed out"  # and the next one still works


def test_each_event_loop_has_its_own_watchdog():
    from afnio_langchain.models._deadlines import watchdog

    async def own() -> object:
        assert await _timed(0.02, 5.0) == "timed out"
        return watchdog(asyncio.get_running_loop())

    first, second = asyncio.run(own()), asyncio.run(own())
    assert first is not second and first.due == {} and second.due == {}
