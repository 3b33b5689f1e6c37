"""Check a demo run: held-out Dice per structure against the 0.7 bound, and report the time.

Usage: python scripts/check_demo.py runs/ci-demo
Fails if the run is incomplete (no report, no time) or a structure's S-SAM Dice is below the
bound or below the untrained model's. Prints the base it ran on, the box-prompted base's Dice
(the expert-prompt reference) beside S-SAM's, the time against the 5-minute budget and the
peak memory (benchmark-style, not asserted: both depend on what else the machine runs).
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
    print(f"plan: {report.get('plan')}")
    print(f"{'structure':<10} {'untrained':>9} {'S-SAM':>7} {'box ref.':>9}  goal {GOAL}")
    failed = []
    for label in report["labels"]:
        before, after = report["dice_untrained"][label], report["dice_trained"][label]
        box = report.get("dice_box", {}).get(label, float("nan"))
        verdict = "met" if after >= GOAL else "not met"
        print(f"{label:<10} {before:9.3f} {after:7.3f} {box:9.3f}  {verdict}")
        if after < max(GOAL, before):
            failed.append(label)
    if "total" not in seconds:
        print("demo check failed: the run reports no total time")
        return 1
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"time budget {BUDGET_S} s: {'within' if seconds['total'] <= BUDGET_S else 'over'}")
    if report.get("peak_rss_mib"):
        print(f"peak memory (RSS): {report['peak_rss_mib']:.0f} MiB")
    if failed:
        print(f"demo check failed: Dice below {GOAL} (or below the untrained model) for {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
