"""``psyduck simulate``: the farm's real coordinator over simulated hosts, in virtual time.

The :class:`farm.coordinator.Coordinator` itself — slot tasks, worker talk,
host faults and quarantine, event streams, and the
:class:`farm.scheduler.Scheduler` it drives — runs on an asyncio loop whose
clock jumps to the next timer (:mod:`.virtual`), over hosts whose workers
"run" each test for its true duration (:mod:`.hosts`).  Nothing sleeps, and
nothing of the coordinator is copied: what the simulation shows is what the
farm's code does.  The same workload is then run under baseline policies
(:mod:`.baselines`) so the figures come side by side.
"""
