"""``psyduck simulate``: the farm's real scheduler over simulated hosts, in virtual time.

A discrete-event simulation (no sleeping, no asyncio) drives
:class:`farm.scheduler.Scheduler` with the same calls, in the same order, as
:class:`farm.coordinator.Coordinator` makes: ``add_slot`` with each host's
capacity, ``install`` of a planned run, ``next_shard`` / ``release`` per idle
slot, ``hosts_with_room`` to wake a host's idle slots, ``finished`` per test,
``requeue`` / ``remove_slot`` / ``unplaceable`` when a host is lost, and
``forget`` when a run ends.  The coordinator's I/O (workers, event streams)
is not simulated.  The same workload is then run under baseline policies
(:mod:`.baselines`) so the figures come side by side.
"""
