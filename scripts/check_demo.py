"""Check a demo run: held-out Dice per structure against the 0.7 bound, and report the time.

Usage: python scripts/check_demo.py runs/ci-demo
Fails if the run is incomplete (no report, no time) or a structure's S-SAM Dice is below the
bound or below the untrained model's. The time is reported against the 5-minute budget
(benchmark-style), not asserted: it depends on what else the machine runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOAL = 0.7
BUDGET_S = 300


def main(folder: str) -> int:
    report = json.loads((Path(folder) / "demo.json").read_text())
    seconds = report["seconds"]
    print(f"weights: {report['weights']}")
    print(f"{'structure':<10} {'untrained':>9} {'S-SAM':>7}  goal {GOAL}")
    failed = []
    for label in report["labels"]:
        before, after = report["dice_untrained"][label], report["dice_trained"][label]
        print(f"{label:<10} {before:9.3f} {after:7.3f}  {'met' if after >= GOAL else 'not met'}")
        if after < max(GOAL, before):
            failed.append(label)
    if "total" not in seconds:
        print("demo check failed: the run reports no total time")
        return 1
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"time budget {BUDGET_S} s: {'within' if seconds['total'] <= BUDGET_S else 'over'}")
    if failed:
        print(f"demo check failed: Dice below {GOAL} (or below the untrained model) for {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
