"""The scheduler's parts: how a run becomes units (:mod:`.policies`), how queued units
are indexed (:mod:`.queues`) and what hosts can hold (:mod:`.capacity`).

:class:`farm.scheduler.Scheduler` puts them together; everything here is pure
data (no I/O, no asyncio), so a simulation drives the same code as the farm.
"""
