"""Git for pipeline notebooks (SPEC §7): matching, diff, history, three-way merge, git wiring.

Each module has one job; the merge logic (`match`, `merge`) works on plain notebook dicts and
does no I/O, so the driver, the tests and the benchmark all exercise the same pure functions.
"""
