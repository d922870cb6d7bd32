"""The request context: use_primary and causal(), nested, on exceptions, and with
no leaks between threads or asyncio tasks.

The failure guarded against is multidb's: one thread-local slot, so a nested
block that ends unpins the outer block, and a pin leaks to whatever ran next.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from replica_router import use_primary
from replica_router.context import UsePrimary, primary_forced


def test_default_is_not_forced():
    assert primary_forced() is False


def test_with_block_forces_and_restores():
    with use_primary():
        assert primary_forced() is True
    assert primary_forced() is False


def test_nested_blocks_restore_the_outer_state():
    with use_primary():
        with use_primary():
            assert primary_forced() is True
        # The inner block ending must not unpin the outer one.
        assert primary_forced() is True
    assert primary_forced() is False


def test_exception_restores_state():
    with pytest.raises(ZeroDivisionError), use_primary():
        1 / 0  # noqa: B018
    assert primary_forced() is False


def test_decorator_forms():
    @use_primary
    def bare():
        return primary_forced()

    @use_primary()
    def called():
        return primary_forced()

    assert bare() is True
    assert called() is True
    assert primary_forced() is False
    assert bare.__name__ == "bare"


def test_decorator_restores_on_exception():
    @use_primary
    def boom():
        assert primary_forced() is True
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        boom()
    assert primary_forced() is False


def test_decorator_recursion_restores_each_level():
    depths = []

    @use_primary
    def recurse(n):
        depths.append(primary_forced())
        if n:
            recurse(n - 1)
        depths.append(primary_forced())

    recurse(3)
    assert depths == [True] * 8
    assert primary_forced() is False


def test_decorator_on_methods():
    class Service:
        @use_primary
        def method(self):
            return primary_forced()

        @use_primary
        @classmethod
        def cls_method(cls):
            return primary_forced()

        @staticmethod
        @use_primary()
        def static():
            return primary_forced()

    service = Service()
    assert service.method() is True
    assert Service.cls_method() is True
    assert Service.static() is True
    assert primary_forced() is False


def test_one_instance_cannot_be_entered_twice_at_once():
    block = use_primary()
    with block, pytest.raises(RuntimeError, match="already active"), block:
        pass  # pragma: no cover
    assert primary_forced() is False
    # Once exited it can be used again.
    with block:
        assert primary_forced() is True


def test_use_primary_returns_a_use_primary_instance():
    assert isinstance(use_primary(), UsePrimary)


def test_generator_functions_are_refused():
    with pytest.raises(TypeError, match="generator"):

        @use_primary
        def gen():
            yield 1


def test_100_threads_do_not_see_each_others_state():
    # Half the threads pin, half do not; all check while every one is inside its
    # block (the barrier), so a shared slot would show up as a wrong value.
    n = 100
    inside = threading.Barrier(n)
    results: dict[int, tuple[bool, bool, bool]] = {}

    def work(i: int) -> None:
        pinned = i % 2 == 0
        if pinned:
            with use_primary():
                inside.wait()
                during = primary_forced()
                inside.wait()  # nobody leaves before everyone has looked
        else:
            inside.wait()
            during = primary_forced()
            inside.wait()
        results[i] = (pinned, during, primary_forced())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    for i, (pinned, during, after) in results.items():
        assert during is pinned, f"thread {i}"
        assert after is False, f"thread {i}"


def test_100_asyncio_tasks_do_not_see_each_others_state():
    n = 100

    async def main() -> list[tuple[bool, bool, bool]]:
        entered = 0
        all_inside = asyncio.Event()
        looked = 0
        all_looked = asyncio.Event()

        async def rendezvous():
            nonlocal entered, looked
            entered += 1
            if entered == n:
                all_inside.set()
            await all_inside.wait()
            during = primary_forced()
            looked += 1
            if looked == n:
                all_looked.set()
            await all_looked.wait()
            return during

        @use_primary
        async def pinned_task():
            return await rendezvous()

        async def plain_task():
            return await rendezvous()

        async def run(i: int) -> tuple[bool, bool, bool]:
            pinned = i % 2 == 0
            during = await (pinned_task() if pinned else plain_task())
            return pinned, during, primary_forced()

        return await asyncio.gather(*(run(i) for i in range(n)))

    results = asyncio.run(main())
    assert len(results) == n
    for pinned, during, after in results:
        assert during is pinned
        assert after is False
    assert primary_forced() is False


def test_async_decorator_sets_state_inside_the_coroutine():
    # Creating the coroutine must not pin the caller: only running it does.
    @use_primary
    async def read():
        await asyncio.sleep(0)
        return primary_forced()

    async def main():
        coroutine = read()
        before = primary_forced()
        result = await coroutine
        return before, result, primary_forced()

    assert asyncio.run(main()) == (False, True, False)


def test_async_decorator_on_method():
    class Service:
        @use_primary
        async def read(self):
            return primary_forced()

    assert asyncio.run(Service().read()) is True


def test_state_follows_copied_context_into_a_worker():
    # sync_to_async copies the context into its worker thread; the pin must follow.
    with use_primary():
        context = contextvars.copy_context()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(context.run(primary_forced)))
    thread.start()
    thread.join()
    assert result == [True]
    assert primary_forced() is False


# -- causal(): what a block's or a job's reads must see --------------------------


def test_causal_carries_a_token_as_the_position_to_read_at_least():
    from replica_router.context import causal, causal_state

    assert causal_state.get() is None
    with causal("16/B374D848") as state:
        assert causal_state.get() is state
        assert state.min_lsn == (0x16 << 32) | 0xB374D848
        assert not state.wrote
        with causal() as inner:
            assert causal_state.get() is inner and inner.min_lsn is None
        assert causal_state.get() is state
    assert causal_state.get() is None


def test_causal_refuses_a_malformed_token():
    from replica_router.context import causal

    with pytest.raises(ValueError, match="not a WAL position"):
        causal("yesterday")


def test_causal_as_a_decorator_gives_each_call_its_own_state():
    from replica_router.context import causal, causal_state, note_write

    seen = []

    @causal("0/10")
    def job(write: bool) -> None:
        state = causal_state.get()
        seen.append((state.min_lsn, state.wrote))
        if write:
            note_write()
            seen.append((state.min_lsn, state.wrote))

    job(True)
    job(False)
    assert seen == [(0x10, False), (0x10, True), (0x10, False)]
    assert causal_state.get() is None


def test_causal_decorates_coroutines_in_the_running_task():
    from replica_router.context import causal, causal_state

    @causal("0/20")
    async def job() -> int | None:
        await asyncio.sleep(0)
        state = causal_state.get()
        return None if state is None else state.min_lsn

    async def both() -> list[int | None]:
        return list(await asyncio.gather(job(), job()))

    assert asyncio.run(both()) == [0x20, 0x20]


def test_a_write_outside_any_block_is_remembered_by_the_context():
    from replica_router.context import _wrote_outside, note_write

    def run() -> bool:
        note_write()
        return _wrote_outside.get()

    def outer() -> bool:
        assert contextvars.copy_context().run(run) is True
        return _wrote_outside.get()

    # From a fresh context: earlier tests in this process (the integration
    # tests, under `make test`) write in the main thread's own context.
    assert contextvars.Context().run(outer) is False
