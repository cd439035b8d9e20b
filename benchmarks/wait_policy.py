"""OpenMP's wait policy and the thread count under competing load, interleaved in one run.

Every (runtime, precision, threads, wait policy) runs in its own fresh process (``OMP_WAIT_POLICY`` is
read when OpenMP starts; ONNX Runtime's spinning follows the policy too), the variants alternating
round by round, so that a load that comes and goes hits all of them alike. ``--busy-cores N`` adds N
spinning processes for the whole run; on a machine that is already shared, leave it at 0.

    python benchmarks/wait_policy.py pvt_v2_b0 --rounds 3 --busy-cores 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from pvt.bench.cases import Case
from pvt.bench.runtimes import Runner, busy_cores, prepare, run_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--precisions", nargs="+", default=["float32", "int8"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--policies", nargs="+", default=["default", "passive"],
                    help="default, passive, active, spin=N (GOMP_SPINCOUNT)")
    ap.add_argument("--peers", nargs="*", default=["onnxruntime"], help="other runtimes, in their int8")
    ap.add_argument("-b", "--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--busy-cores", type=int, default=0)
    args = ap.parse_args()
    variants = [(Runner("pvt", p, t), w) for p in args.precisions for t in args.threads for w in args.policies]
    variants += [(Runner(r, "int8", t), w) for r in args.peers for t in args.threads for w in args.policies]
    case = Case(args.model, args.batch_size, (224, 224))
    with tempfile.TemporaryDirectory() as tmp, busy_cores(args.busy_cores):
        files = prepare(args.model, Path(tmp), [v[0] for v in variants], case)
        rates: dict[tuple[Runner, str], list[float]] = {v: [] for v in variants}
        for k in range(args.rounds):
            for runner, policy in variants[k % len(variants):] + variants[: k % len(variants)]:
                got = run_runner(runner, args.model, files, warmup=2, repeats=args.repeats, wait_policy=policy)
                rates[(runner, policy)].append(args.batch_size / statistics.median(got["seconds"]))
            print(f"# round {k + 1} done", flush=True)
    print(f"{'runner':<24} {'policy':<8} {'img/s':>7}  per round (busy cores {args.busy_cores})")
    for (runner, policy), v in rates.items():
        print(f"{runner.label:<24} {policy:<8} {statistics.median(v):>7.1f}  {' '.join(f'{x:.1f}' for x in v)}")


if __name__ == "__main__":
    main()
