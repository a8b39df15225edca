"""The micro-batcher on its own: it fills batches, and a failing batch fails only its own requests."""

from __future__ import annotations

import asyncio

from fintrl.serve.batcher import MicroBatcher


def test_micro_batcher_fills_batches_and_isolates_a_failing_one() -> None:
    seen: list[list[str]] = []

    def score(texts: list[str]) -> list[str]:
        seen.append(texts)
        if "bad" in texts:
            raise ValueError("bad batch")
        return [t.upper() for t in texts]

    async def scenario() -> tuple[list, list]:
        batcher = MicroBatcher(score, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        try:
            ok = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(10)), batcher.submit(["a", "b"]))
            failed = await asyncio.gather(batcher.submit(["bad"]), return_exceptions=True)
            return ok, [*failed, await batcher.submit(["after"])]
        finally:
            await batcher.stop()
            stats = batcher.stats
            assert (stats.batches, stats.failed_batches, stats.texts, stats.sizes) == (4, 1, 13, {4: 3, 1: 1})

    ok, rest = asyncio.run(scenario())
    assert ok == [[f"T{i}"] for i in range(10)] + [["A", "B"]]
    assert [len(b) for b in seen[:3]] == [4, 4, 4] and isinstance(rest[0], ValueError) and rest[1] == ["AFTER"]
