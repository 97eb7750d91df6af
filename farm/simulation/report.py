"""``psyduck simulate``'s figures: one JSON object, a readable summary, a Gantt picture."""

from __future__ import annotations

import html
import random
import resource
import time
from typing import Any

from farm.simulation.baselines import run_baselines
from farm.simulation.engine import Outcome, simulate_runs
from farm.simulation.workload import Options, Suite, bounds, generate, remembered

#: Slots drawn in a Gantt picture: the first ones of the farm (thousands would not be readable).
GANTT_SLOTS = 64


def simulate(options: Options, gantt: bool = False) -> tuple[dict[str, Any], Outcome]:
    """Simulate *options*' workload with the farm's scheduler and the baselines."""
    options.check()
    rng = random.Random(options.seed)
    big = generate(options, rng, "big", options.tests, options.variants)
    small = (
        generate(options, rng, "small", options.small_run, options.small_variants)
        if options.small_run
        else None
    )
    suites = [big] + ([small] if small else [])
    longest, work = bounds(suites, options)
    bound = max(longest, work)
    # Mid-way through the time the big run's work keeps the whole farm busy.
    arrival = bounds([big], options)[1] / 2
    runs: list[tuple[float, str, Suite]] = [(0.0, "big", big)]
    if small:
        runs.append((arrival, "small", small))
    failures = sorted(rng.uniform(0, arrival) for _ in range(options.host_failures))
    drawn = {f"host{h}/{s}" for h in range(options.hosts) for s in range(options.slots)}
    drawn = set(sorted(drawn, key=_slot_order)[:GANTT_SLOTS]) if gantt else set()
    wall = time.perf_counter()
    outcome, timed = simulate_runs(options, runs, failures, rng, drawn.__contains__)
    wall = time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    makespan = max(outcome.finish.values())
    result: dict[str, Any] = {
        "makespan_s": makespan,
        "lower_bound_s": bound,
        "makespan_ratio": makespan / bound,
        "decisions": timed.decisions,
        "decisions_per_s": timed.decisions / timed.decision_cpu if timed.decision_cpu else 0.0,
        "scheduler_cpu_s": timed.cpu,
        "simulation_wall_s": wall,
        "peak_rss_bytes": peak,
        "oversubscribed_host_seconds": outcome.oversubscribed,
        "tests": len(big.tests) + (len(small.tests) if small else 0),
        "executions": outcome.ran,
        "crashed": outcome.crashed,
    }
    if small:
        alone, _ = simulate_runs(options, [(0.0, "small", small)], [], random.Random(0))
        result["small_run_arrival_s"] = arrival
        result["small_run_s"] = outcome.finish["small"] - arrival
        result["small_run_alone_s"] = alone.finish["small"]
        result["small_run_slowdown"] = result["small_run_s"] / alone.finish["small"]
    if options.unknown:
        # The same runs again, once the farm's history knows what the first run measured.
        again = [(when, name, remembered(suite, rng, options.noise)) for when, name, suite in runs]
        second, _ = simulate_runs(options, again, failures, random.Random(options.seed))
        result["second_run_makespan_s"] = max(second.finish.values())
        result["second_run_makespan_ratio"] = result["second_run_makespan_s"] / bound
    baselines = run_baselines(options, suites)
    for figures in baselines.values():
        figures["makespan_ratio"] = figures["makespan_s"] / bound
    result["baselines"] = baselines
    return result, outcome


def _slot_order(slot: str) -> tuple[int, int]:
    host, _, index = slot.partition("/")
    return int(host.removeprefix("host")), int(index)


def summary(result: dict[str, Any]) -> str:
    """The figures, for a person."""
    lines = [
        f"makespan: {result['makespan_s']:.1f} s "
        f"({result['makespan_ratio']:.3f}x the lower bound of {result['lower_bound_s']:.1f} s)",
        f"decisions: {result['decisions']} ({result['decisions_per_s']:.0f}/s of scheduler CPU; "
        f"{result['scheduler_cpu_s']:.2f} s in the scheduler in all)",
        f"peak memory: {result['peak_rss_bytes'] / 2**20:.0f} MiB",
        f"oversubscribed host-seconds: {result['oversubscribed_host_seconds']:.1f}",
        f"tests: {result['tests']} ({result['executions']} executions, "
        f"{result['crashed']} crashed with lost hosts)",
    ]
    if "small_run_slowdown" in result:
        lines.append(
            f"small run: {result['small_run_s']:.1f} s beside the big run, "
            f"{result['small_run_alone_s']:.1f} s alone ({result['small_run_slowdown']:.2f}x)"
        )
    if "second_run_makespan_ratio" in result:
        lines.append(
            f"the same runs again, untimed tests timed by the farm's history: "
            f"{result['second_run_makespan_s']:.1f} s "
            f"({result['second_run_makespan_ratio']:.3f}x the lower bound)"
        )
    for name, figures in result["baselines"].items():
        lines.append(
            f"baseline {name}: {figures['makespan_s']:.1f} s "
            f"({figures['makespan_ratio']:.3f}x the bound), "
            f"{figures['oversubscribed_host_seconds']:.1f} oversubscribed host-seconds"
        )
    return "\n".join(lines)


def gantt_svg(outcome: Outcome, title: str) -> str:
    """Slots over time as an SVG: one row per slot, a bar per shard, coloured by run."""
    slots = sorted({bar[0] for bar in outcome.bars}, key=_slot_order)
    row = {slot: i for i, slot in enumerate(slots)}
    end = max((bar[2] for bar in outcome.bars), default=1.0) or 1.0
    width, height, left, top = 1000, 12, 90, 30
    scale = width / end
    colours = {"big": ("#4c78a8", "#1f3f66"), "small": ("#f58518", "#a34f00")}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
        f'height="{top + height * len(slots) + 30}" font-family="sans-serif" font-size="10">',
        f'<text x="{left}" y="18" font-size="13">{html.escape(title)}</text>',
    ]
    for slot, index in row.items():
        parts.append(f'<text x="4" y="{top + index * height + 9}">{slot}</text>')
    for slot, start, stop, run, heavy in outcome.bars:
        fill = colours.get(run, ("#54a24b", "#2d5a27"))[heavy]
        parts.append(
            f'<rect x="{left + start * scale:.2f}" y="{top + row[slot] * height}" '
            f'width="{max((stop - start) * scale, 0.5):.2f}" height="{height - 2}" '
            f'fill="{fill}" stroke="white" stroke-width="0.3"/>'
        )
    axis = top + height * len(slots) + 14
    parts.append(f'<text x="{left}" y="{axis}">0 s</text>')
    parts.append(f'<text x="{left + width - 60}" y="{axis}">{end:.0f} s</text>')
    parts.append(
        f'<text x="{left + 200}" y="{axis}">blue: the big run; orange: the small run; '
        "darker: shards reserving more than a slot's share</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
