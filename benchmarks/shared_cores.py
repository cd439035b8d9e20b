"""Idle vs one busy core, the same ``pvt benchmark`` command, interleaved: every variant once per pair,
order alternating, the load average read before each run (the machine may be shared).

    python benchmarks/shared_cores.py --pairs 2 -- pvt_v2_b0 -b 8 --repeats 10 --rounds 1

Variants: threads ``auto`` (the runners' default: the cores free at each process's start) and ``--threads
2`` (the old default on a 2-core machine), each with ``--busy-cores 0`` and ``1``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {"auto idle": [], "auto busy": ["--busy-cores", "1"], "2t idle": ["--threads", "2"],
            "2t busy": ["--threads", "2", "--busy-cores", "1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("args", nargs="*", help="pvt benchmark arguments (after --)")
    args = ap.parse_args()
    got: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for k in range(args.pairs):
        order = list(VARIANTS) if k % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            load = Path("/proc/loadavg").read_text().split()[0]
            out = subprocess.run([sys.executable, "-m", "pvt", "benchmark", *args.args, *VARIANTS[v]],
                                 capture_output=True, text=True, check=True).stdout
            row = next(line for line in out.splitlines() if line.split()[3:5] == ["pvt", "float32"])
            rate = float(row.split()[5])
            got[v].append(rate)
            print(f"pair {k + 1} {v:<9} {rate:7.2f} img/s  load average {load}  | {row.split('  per round')[0][-40:]}",
                  flush=True)
    med = {v: statistics.median(r) for v, r in got.items()}
    for t in ("auto", "2t"):
        print(f"{t}: idle {med[t + ' idle']:.2f}, busy {med[t + ' busy']:.2f} img/s: busy keeps "
              f"{100 * med[t + ' busy'] / med[t + ' idle']:.0f} %")
    print(f"auto idle / 2t idle: {med['auto idle'] / med['2t idle']:.3f}")


if __name__ == "__main__":
    main()
