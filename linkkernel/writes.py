"""The cache store's background jobs and how its writes went (SPEC §3 "Persistence").

The store writes after the reply, on a thread of its own; the user learns that results are
not being kept only from this bookkeeping: a disk full is said once per outage, and an
outage ends when a write lands. Pure: it looks at futures, never at a disk, so the rule is
tested on its own.
"""

from __future__ import annotations

from concurrent.futures import Future


class BackgroundWrites:
    """Every background job of one store, in the order submitted, and the outages of its writes.

    One list: a record write carries its number (> 0) until its end is noted (`_look`), every
    other job (a sweep, a removal, a record write noted failed) 0. A failed job stays until
    `wait` hands its error over. Writes that failed or were refused since the last one known
    to have landed, each numbered in the order it happened (`_tick`), are one outage, said
    once (`trouble`)."""

    def __init__(self) -> None:
        self._jobs: list[tuple[int, Future]] = []
        self._tick = 0
        self._failures: list[tuple[int, BaseException]] = []
        self._landed = 0  # the number of the last write known to have landed
        self._said = 0  # the number of the last failure the user was told of

    def add(self, job: Future, write: bool = False) -> None:
        """Keep `job` until it ended well or its error was handed over; `write`: a record
        write, whose end counts for the outage rule."""
        if write:
            self._tick += 1
            self._jobs.append((self._tick, job))
        else:
            self._jobs.append((0, job))

    def prune(self) -> None:
        """Forget the jobs that ended well, but writes whose end is not noted yet: without
        this a long session kept a future per run."""
        self._jobs = [(number, job) for number, job in self._jobs if number or not job.done() or job.exception() is not None]

    def under_way(self) -> bool:
        """Whether a job has not ended yet."""
        return not all(job.done() for _, job in self._jobs)

    def wait(self) -> list[BaseException]:
        """Wait for every job; the errors of those that failed, each handed over once."""
        errors = [exc for exc in (job.exception() for _, job in self._jobs) if exc is not None]
        self._look()  # every write has ended: how each went is noted
        self._jobs = []
        return errors

    def refused(self, exc: BaseException) -> None:
        """Note a write refused now (no folder, no room): it fails like one that ran."""
        self._tick += 1
        self._failed(self._tick, exc)

    def outage(self) -> bool:
        """Whether writes failed since the last one known to have landed."""
        return bool(self._failures)

    def trouble(self) -> BaseException | None:
        """The first failure of an outage the user was not told of yet, now told (None
        otherwise). Once a write lands again the outage is over, and the next one is said
        too: a disk freed, then full again, lost results without a word.

        A write refused now, after the user was told, is a new outage if a write still under
        way lands: waited for, so that it is said in the cell whose results it loses."""
        if self._failures and self._failures[-1][0] > self._said:
            last = self._failures[-1][0]
            for number, job in self._jobs:
                if 0 < number < last:
                    job.exception()  # waits
        self._look()
        if not self._failures or self._said > self._landed:
            return None
        self._said = self._failures[-1][0]
        return self._failures[0][1]

    def told(self) -> None:
        """The user was told of every failure so far, by a caller of its own (`cache import`)."""
        self._look()
        self._said = self._tick

    def _failed(self, number: int, exc: BaseException) -> None:
        if number > self._landed:
            self._failures.append((number, exc))
            self._failures.sort(key=lambda failure: failure[0])

    def _look(self) -> None:
        """Note how the writes that ended went, in the order they ran (one writer thread),
        up to the first still under way: one that landed ends the outage of the failures
        before it, and the disk has room again."""
        kept: list[tuple[int, Future]] = []
        jobs = iter(self._jobs)
        for number, job in jobs:
            if number and not job.done():
                kept.append((number, job))
                kept.extend(jobs)
                break
            if number:
                exc = job.exception()
                if exc is None:
                    self._landed = number
                    self._failures = [failure for failure in self._failures if failure[0] > number]
                    continue
                self._failed(number, exc)
            kept.append((0, job))
        self._jobs = kept
