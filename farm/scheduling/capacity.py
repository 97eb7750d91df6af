"""What each host can hold: slots, and CPUs and memory as capacity shards reserve.

A shard reserves the CPUs and memory its tests ask for, or its slot's share
of the host (the host's capacity divided by its slots), and is placed only
where that much is free: a host is never given more than it has.  A host
that declares no capacity is bounded by its slots alone.

Placement questions asked per run or per queue ("can any host run tests
needing these labels?") are answered from *host
classes* — hosts grouped by labels and capacity — so they cost the number of
distinct kinds of host, not the number of slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from farm.scheduling.policies import PlacementKey

#: CPUs are counted in thousandths, so that reservations add up exactly.
MILLI = 1000
#: A host is held back for a big shard only if enough of it frees up within about
#: this many (estimated) seconds.
DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class Capacity:
    """A host's CPUs and memory (bytes), all of which its slots share."""

    cpus: float
    memory: int

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.memory <= 0:
            raise ValueError(f"a host's capacity must be positive, not {self}")


def placeable(requires: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every required dimension is among the host's values (comma-separated in a label)."""
    return all(v in labels.get(k, "").split(",") for k, v in requires.items())


Labels = tuple[tuple[str, str], ...]
#: What a shard asks of a host: (milli-CPUs, bytes).
Need = tuple[int, int]


@dataclass
class HostRoom:
    """One host's slots and what its running shards have reserved."""

    name: str
    labels: Labels
    capacity: Capacity | None
    slots: int = 0
    used: Need = (0, 0)
    #: Part of ``used`` held by shards that may run longer than :data:`DRAIN_SECONDS`.
    lasting: Need = (0, 0)
    #: Resources (a placement key's) held back for a big shard the host is draining for.
    reserved: PlacementKey | None = None
    #: :meth:`need` by (key, slots): every decision asks it for each queued key.
    _needs: dict[tuple[PlacementKey, int], Need] = field(
        default_factory=dict, repr=False, compare=False
    )

    def need(self, key: PlacementKey) -> Need:
        """What a shard of *key* reserves here: its hints, else one slot's share.

        A hint beyond the host's capacity reserves the whole host: the test
        runs as it would under plain pytest on that machine, alone.
        """
        if self.capacity is None:
            return (0, 0)
        found = self._needs.get((key, self.slots))
        if found is None:
            _, _, cpus, memory = key
            share = max(self.slots, 1)
            found = self._needs[key, self.slots] = (
                round(min(cpus or self.capacity.cpus / share, self.capacity.cpus) * MILLI),
                min(memory or self.capacity.memory // share, self.capacity.memory),
            )
        return found

    def free(self) -> Need:
        assert self.capacity is not None
        return (
            round(self.capacity.cpus * MILLI) - self.used[0],
            self.capacity.memory - self.used[1],
        )

    def fits(self, key: PlacementKey) -> bool:
        """A shard of *key* fits now, leaving the reservation (if any, and not *key*'s) free."""
        if self.capacity is None:
            return True
        cpus, memory = self.need(key)
        free_cpus, free_memory = self.free()
        if self.reserved is not None and self.reserved != key:
            held_cpus, held_memory = self.need(self.reserved)
            free_cpus, free_memory = free_cpus - held_cpus, free_memory - held_memory
        return cpus <= free_cpus and memory <= free_memory

    def could_drain_for(self, key: PlacementKey) -> bool:
        """A shard of *key* would fit once the shards that end soon have ended.

        Holding a host back for a big shard is worth it only then: a host busy
        with hours-long shards would leave its free room idle for hours.
        """
        if self.capacity is None:
            return True
        cpus, memory = self.need(key)
        total = (round(self.capacity.cpus * MILLI), self.capacity.memory)
        return cpus <= total[0] - self.lasting[0] and memory <= total[1] - self.lasting[1]

    def take(self, need: Need, lasting: bool) -> None:
        self.used = (self.used[0] + need[0], self.used[1] + need[1])
        if lasting:
            self.lasting = (self.lasting[0] + need[0], self.lasting[1] + need[1])

    def give_back(self, need: Need, lasting: bool) -> None:
        self.used = (self.used[0] - need[0], self.used[1] - need[1])
        if lasting:
            self.lasting = (self.lasting[0] - need[0], self.lasting[1] - need[1])


@dataclass
class HostIndex:
    """The hosts in service, by name and by class (labels and capacity)."""

    hosts: dict[str, HostRoom] = field(default_factory=dict)
    #: How many hosts are held back for shards of each placement key.
    holding: dict[PlacementKey, int] = field(default_factory=dict)
    classes: dict[tuple[Labels, Capacity | None], set[str]] = field(default_factory=dict)
    _fits: dict[tuple[Labels, tuple[tuple[str, str], ...]], bool] = field(default_factory=dict)

    def add_slot(self, host: str, labels: Mapping[str, str], capacity: Capacity | None) -> HostRoom:
        room = self.hosts.get(host)
        sorted_labels = tuple(sorted(labels.items()))
        if room is None:
            room = self.hosts[host] = HostRoom(host, sorted_labels, capacity)
        elif (room.labels, room.capacity) != (sorted_labels, capacity):
            self._unclass(room)
            room.labels, room.capacity = sorted_labels, capacity
        room.slots += 1
        self.classes.setdefault((room.labels, room.capacity), set()).add(host)
        return room

    def remove_slot(self, host: str) -> None:
        room = self.hosts[host]
        room.slots -= 1
        if room.slots <= 0:
            self.hold(room, None)
            self._unclass(room)
            del self.hosts[host]

    def hold(self, room: HostRoom, key: PlacementKey | None) -> None:
        """Hold *room* back for a shard of *key* (None: for nothing any more)."""
        if room.reserved is not None:
            self.holding[room.reserved] -= 1
        room.reserved = key
        if key is not None:
            self.holding[key] = self.holding.get(key, 0) + 1

    def _unclass(self, room: HostRoom) -> None:
        members = self.classes.get((room.labels, room.capacity), set())
        members.discard(room.name)
        if not members:
            self.classes.pop((room.labels, room.capacity), None)

    def labels_fit(self, labels: Labels, key: PlacementKey) -> bool:
        """Hosts labelled *labels* may run tests of *key* (memoized: few distinct pairs)."""
        pair = (labels, key[1])
        fit = self._fits.get(pair)
        if fit is None:
            fit = self._fits[pair] = placeable(dict(key[1]), dict(labels))
        return fit

    def anywhere(self, key: PlacementKey, but: str | None = None) -> bool:
        """Some host in service (other than *but*) has the labels *key* requires."""
        return any(
            names - {but} and self.labels_fit(labels, key)
            for (labels, _), names in self.classes.items()
        )
