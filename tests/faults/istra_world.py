"""What the two Istra fault modules share: their world of every Istra kind, the report, the test body.

The PBX faults of every Istra kind are split over two modules, ``test_pbx_faults.py`` (sockets cut or
closed, pings unanswered, garbage frames) and ``test_pbx_session_faults.py`` (sessions expired, 503s,
outages, all of them in a row, the idle timeout). Each module has its own hub (``fault_hub``, with
``HUB_SETTINGS = istra_fault_settings``) and world: as one module they held one test process for 4-6
minutes, the longest run of the suite; two modules run side by side in two processes (issue 16).

One simulator and one hub hold every Istra kind (``seed_world(kinds=ISTRA_KINDS)``): a myRCC enterprise,
a myCrm user who also has an End User account (its call history), a myCrm user with nothing else, and an
End User-only user. Each test plays its own calls on all of them, breaks the PBX side a few times while
they run (``harness.Faults``: each fault hits every socket, so every kind), and checks those calls end to
end per kind (``Figures.by_kind``): none lost or stuck, answered state and talking time right, retailCRM's
events and one upload exactly once, and each listener connected again within seconds of the PBX being
reachable again (issue 13's target is 5 s: seen at most 2.2 s on a busy 2-core machine; the tests allow
``RECONNECT_BOUND_MS``). Each test's figures go to ``test-artifacts/faults-istra-<module>.jsonl``; ``python -m
tests.faults.table test-artifacts/faults-istra-*.jsonl`` prints the table.

The hub runs with short timings (``istra_fault_settings``): a REST session check every 2 s, calls stale
after 30 s without news, call-history entries settled after 2 s; and the production backoff cap.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.harness import ISTRA_KINDS, Faults, run_with_faults, seed_world
from tests.faults.table import write_line
from tests.support.processes import ARTIFACTS

# From the PBX reachable again to every listener connected again. Issue 13's target is 5 s; the hub's own
# waits in it are timers (a session check every 2 s, a backoff of at most 2.5 s after a 10 s outage), seen
# at most 2.2 s in all on a busy 2-core machine. The bound is twice the target, so that a machine half as
# fast and busy passes; a hub that waited out a backoff grown to its 60 s cap still fails it.
RECONNECT_BOUND_MS = 10000
CALLS_PER_SECOND = 3.0  # over ten extensions of four kinds, each kind gets a quarter of them


def report_path(module_name: str) -> Path:
    """The module's own report file: the two modules run at once, each clearing only its own."""
    return ARTIFACTS / f"faults-istra-{module_name.rsplit('.', 1)[-1].removeprefix('test_')}.jsonl"


def istra_world(fault_hub, report: Path):
    report.unlink(missing_ok=True)
    return seed_world(fault_hub, kinds=ISTRA_KINDS)


def report(request, figures, faults: Faults | None = None, injected: dict | None = None, **extra) -> None:
    """The test's figures, per kind, to the module's report file and the output; then the invariant's verdict."""
    reconnects_ms = faults.reconnects_ms if faults is not None else {}
    figures.add_reconnects(reconnects_ms)
    write_line(report_path(request.module.__name__), request.node.name,
               faults.injected if faults is not None else injected or {},
               {kind: kind_figures.as_dict() for kind, kind_figures in figures.by_kind.items()}, reconnects_ms, extra)
    for kind, kind_figures in figures.by_kind.items():
        print(f"{kind}: {kind_figures.as_dict()}")
    figures.assert_clean()
    unchecked = [kind for kind, kind_figures in figures.by_kind.items() if not kind_figures.calls_checked]
    assert not unchecked, f"no call checked for {unchecked}"


def assert_quick_reconnects(figures, faults: Faults) -> None:
    """Every kind's listeners came back, within RECONNECT_BOUND_MS of the PBX being reachable again."""
    for kind in ISTRA_KINDS:
        samples = faults.reconnects_ms.get(kind, [])
        assert samples, f"{kind}: no reconnect measured"
        assert max(samples) <= RECONNECT_BOUND_MS, f"{kind}: reconnects took {sorted(samples)[-5:]} ms"


def run(request, world, seed: int, inject, rounds: int = 2, calls_between: int = 6, timed: bool = True):
    figures, faults = run_with_faults(world, seed, inject, rounds=rounds, calls_between=calls_between,
                                      calls_per_second=CALLS_PER_SECOND, assert_clean=False)
    report(request, figures, faults)
    if timed:
        assert_quick_reconnects(figures, faults)
    return figures, faults
