"""The fault table per Istra kind, from the figures the PBX fault tests write.

``tests/faults/test_pbx_faults.py`` and ``test_pbx_session_faults.py`` append one JSON line per test to
their own ``test-artifacts/faults-istra-<module>.jsonl`` (``write_line``): the test, the faults it injected,
and per Istra kind its call figures and every listener reconnect time measured. This prints them as
markdown, one row per kind over all tests of every file given (the closing note of issue 13), then one row
per test and kind::

    python -m tests.faults.table test-artifacts/faults-istra-*.jsonl

Plain JSON in, text out: no Django, so it runs anywhere the file is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COUNTED = ("calls_checked", "calls_unreported", "calls_swept", "calls_lost", "calls_stuck", "wrong_final_state",
           "duplicated_records", "duplicated_events", "missing_events", "duplicated_uploads")
HEADINGS = ("checked", "unreported", "swept", "lost", "stuck", "wrong state", "dup. records", "dup. events",
            "missing events", "dup. uploads")


def write_line(path: Path, test: str, faults: dict[str, int], kinds: dict[str, dict],
               reconnects_ms: dict[str, list[float]], extra: dict | None = None) -> None:
    """Append one test's figures: ``kinds`` maps a kind to its ``Figures.as_dict()``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"test": test, "faults": dict(faults),
            "kinds": {kind: {**figures, "reconnects_ms": list(reconnects_ms.get(kind, []))}
                      for kind, figures in kinds.items()},
            **(extra or {})}
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _timing(samples: list[float]) -> list[str]:
    if not samples:
        return ["0", "-", "-"]
    return [str(len(samples)), f"{percentile(samples, 0.5) / 1000:.2f} s", f"{percentile(samples, 0.99) / 1000:.2f} s"]


def table(lines: list[dict]) -> str:
    kinds: list[str] = []
    for line in lines:
        kinds += [kind for kind in line["kinds"] if kind not in kinds]
    faults_injected = sum(sum(line["faults"].values()) for line in lines)
    out = [f"{len(lines)} tests, {faults_injected} faults injected (each fault hits every kind at once)", "",
           _row(("kind", "faults", *HEADINGS, "reconnects", "reconnect p50", "reconnect p99")),
           _row(["---"] * (len(HEADINGS) + 5))]
    for kind in kinds:
        mine = [line for line in lines if kind in line["kinds"]]
        totals = [sum(line["kinds"][kind].get(name, 0) for line in mine) for name in COUNTED]
        samples = [s for line in mine for s in line["kinds"][kind].get("reconnects_ms", [])]
        out.append(_row((kind, sum(sum(line["faults"].values()) for line in mine), *totals, *_timing(samples))))
    out += ["", _row(("test", "faults", "kind", *HEADINGS, "reconnects", "reconnect p50", "reconnect p99")),
            _row(["---"] * (len(HEADINGS) + 6))]
    for line in lines:
        faults = ", ".join(f"{name} x{count}" for name, count in line["faults"].items()) or "-"
        for kind, figures in line["kinds"].items():
            out.append(_row((line["test"], faults, kind, *(figures.get(name, 0) for name in COUNTED),
                             *_timing(figures.get("reconnects_ms", [])))))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().split("\n\n")[-2].strip(), file=sys.stderr)
        return 2
    lines = [json.loads(text) for path in argv for text in Path(path).read_text().splitlines() if text.strip()]
    print(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
