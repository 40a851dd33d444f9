"""The cache store's background-job bookkeeping (linkkernel.writes) on its own: futures
settled by hand, no disk, no thread. The kernel-level tests of the same rule (a real disk
filling twice) are in test_qa_left.py and test_qa_crash.py."""

from __future__ import annotations

import errno
from concurrent.futures import Future

from linkkernel.writes import BackgroundWrites

FULL = OSError(errno.ENOSPC, "No space left on device")


def _ended(exc: BaseException | None = None) -> Future:
    job: Future = Future()
    if exc is None:
        job.set_result(None)
    else:
        job.set_exception(exc)
    return job


def test_a_disk_full_is_said_once_per_outage_and_an_outage_ends_when_a_write_lands():
    writes = BackgroundWrites()
    writes.add(_ended(FULL), write=True)
    assert writes.trouble() is FULL
    writes.add(_ended(OSError("again")), write=True)
    assert writes.trouble() is None  # the same outage: said already
    writes.add(_ended(), write=True)
    assert writes.trouble() is None and not writes.outage()
    second = OSError(errno.ENOSPC, "full again")
    writes.add(_ended(second), write=True)
    assert writes.trouble() is second  # a new outage, said again
    assert writes.trouble() is None


def test_writes_are_noted_in_the_order_they_ran_and_an_outage_said_by_its_first_failure():
    writes = BackgroundWrites()
    under_way: Future = Future()
    writes.add(under_way, write=True)
    writes.add(_ended(FULL), write=True)
    assert writes.trouble() is None  # the write before it may yet land: not known to be an outage
    first = OSError("first")
    under_way.set_exception(first)
    assert writes.trouble() is first and writes.trouble() is None


def test_a_write_landing_after_a_failure_of_a_later_one_does_not_end_its_outage():
    writes = BackgroundWrites()
    under_way: Future = Future()
    writes.add(under_way, write=True)
    writes.refused(FULL)  # numbered after the write under way
    under_way.set_result(None)
    assert writes.trouble() is FULL


def test_a_refusal_after_a_write_landed_is_a_new_outage():
    writes = BackgroundWrites()
    writes.add(_ended(FULL), write=True)
    assert writes.trouble() is FULL
    landing: Future = Future()
    writes.add(landing, write=True)
    writes.refused(FULL)
    landing.set_result(None)
    assert writes.trouble() is FULL


def test_told_counts_as_said():
    writes = BackgroundWrites()
    writes.add(_ended(FULL), write=True)
    writes.told()
    assert writes.outage() and writes.trouble() is None


def test_a_landing_pruned_before_it_was_looked_at_still_ends_the_outage():
    writes = BackgroundWrites()
    writes.add(_ended(FULL), write=True)
    assert writes.trouble() is FULL
    writes.add(_ended(), write=True)
    writes.prune()  # what `put` does before each write
    second = OSError(errno.ENOSPC, "full again")
    writes.add(_ended(second), write=True)
    assert writes.trouble() is second


def test_each_error_is_handed_over_once_and_how_each_write_went_is_kept():
    writes = BackgroundWrites()
    removal = _ended(OSError("removal"))
    under_way: Future = Future()
    for job in (_ended(), removal, under_way):
        writes.add(job)
    writes.add(_ended(FULL), write=True)
    assert writes.under_way()
    writes.prune()
    under_way.set_result(None)
    assert not writes.under_way()
    assert writes.wait() == [removal.exception(), FULL]
    assert writes.wait() == []
    assert writes.trouble() is FULL  # noted as the write was waited for, not lost with its future
