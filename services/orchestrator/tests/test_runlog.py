"""A run's output on its way out: numbered, cut, bounded, batched, in order."""

from __future__ import annotations

import asyncio

from praxis_contracts.runs import LOG_BATCH_LINES, LOG_LINE_CHARS, LogLine
from praxis_orchestrator.runlog import LOG_BATCH_BYTES, RunLog


class Batches:
    def __init__(self) -> None:
        self.sent: list[list[LogLine]] = []
        self.arrived = asyncio.Event()

    def __call__(self, lines: list[LogLine]) -> None:
        self.sent.append(lines)
        self.arrived.set()

    @property
    def lines(self) -> list[LogLine]:
        return [line for batch in self.sent for line in batch]


async def test_lines_are_numbered_split_cut_and_sent_after_a_moment() -> None:
    out = Batches()
    log = RunLog(out, flush_seconds=0.05)
    log.add("protocol", "INFO", "mine", "one\ntwo")
    log.add("instrument", "WARNING", "pylabrobot", "x" * (LOG_LINE_CHARS + 10))
    assert out.sent == []  # gathered for a moment
    await asyncio.wait_for(out.arrived.wait(), 5)
    (batch,) = out.sent
    assert [(x.seq, x.source, x.message[:3]) for x in batch] == [
        (0, "protocol", "one"),
        (1, "protocol", "two"),
        (2, "instrument", "xxx"),
    ]
    assert len(batch[2].message) == LOG_LINE_CHARS and batch[2].level == "WARNING"


async def test_a_full_batch_goes_at_once_and_batches_stay_bounded() -> None:
    out = Batches()
    log = RunLog(out, flush_seconds=60)
    log.add("protocol", "INFO", None, "\n".join(str(i) for i in range(LOG_BATCH_LINES * 2 + 5)))
    assert [len(b) for b in out.sent] == [LOG_BATCH_LINES, LOG_BATCH_LINES, 5]
    assert [x.seq for x in out.lines] == list(range(LOG_BATCH_LINES * 2 + 5))


async def test_written_text_goes_out_by_whole_lines_and_the_rest_at_the_end() -> None:
    out = Batches()
    log = RunLog(out, flush_seconds=60)
    for piece in ("Aspir", "ating 30 uL\nDisp", "ensing"):
        log.write("instrument", "INFO", "stdout", piece)
    log.flush()
    assert [x.message for x in out.lines] == ["Aspirating 30 uL"]
    log.close()
    assert [x.message for x in out.lines] == ["Aspirating 30 uL", "Dispensing"]
    log.add("protocol", "INFO", None, "after the end")
    assert len(out.lines) == 2  # a closed log takes nothing more


async def test_past_the_limit_lines_are_counted_and_said_once_at_the_end() -> None:
    out = Batches()
    log = RunLog(out, limit=3, flush_seconds=60)
    log.add("protocol", "INFO", None, "\n".join(str(i) for i in range(10)))
    log.dropped += 5  # what the runner itself did not send
    log.close()
    assert [x.message for x in out.lines] == ["0", "1", "2", "12 more lines were not kept"]
    assert out.lines[-1].level == "WARNING"


async def test_a_batch_stays_within_its_bytes_whatever_the_characters() -> None:
    """200 lines of 2,000 four-byte characters would be 1.6 MB: past NATS's 1 MB."""
    out = Batches()
    log = RunLog(out, flush_seconds=60)
    log.add(
        "protocol", "INFO", None, "\n".join("😀" * LOG_LINE_CHARS for _ in range(LOG_BATCH_LINES))
    )
    log.flush()
    assert len(out.sent) > 1 and len(out.lines) == LOG_BATCH_LINES
    for batch in out.sent:
        assert sum(len(x.model_dump_json().encode()) + 1 for x in batch) <= LOG_BATCH_BYTES
