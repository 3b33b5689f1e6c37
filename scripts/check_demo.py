"""Report a demo run (benchmark-style): Dice per structure against the 0.7 goal, and time.

Usage: python scripts/check_demo.py runs/ci-demo
Fails only if the run is incomplete (no report, no time) or training made a structure worse.
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
    worse = []
    for label in report["labels"]:
        before, after = report["dice_untrained"][label], report["dice_trained"][label]
        print(f"{label:<10} {before:9.3f} {after:7.3f}  {'met' if after >= GOAL else 'not met'}")
        if after < before:
            worse.append(label)
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"time budget {BUDGET_S} s: {'within' if seconds['total'] <= BUDGET_S else 'over'}")
    if "total" not in seconds or worse:
        print(f"demo check failed: time missing or worse after training: {worse}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
