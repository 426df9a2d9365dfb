#!/usr/bin/env python3
"""Churn soak: a six-node Casserole cluster and etcd on loopback, clients downloading checked
ranges through random nodes while a node is killed with -9, restarted, or a seventh joins and
leaves, every few seconds.

`python3 tests/bench/churn.py [--seconds 60] [--bin-dir DIR] [--out tests/bench/results]`

Runs `casserole-churn` (tests/src/churn.rs, the same scenario as the CI test
tests/tests/churn.rs, longer and on release binaries), prints its table and writes it to
OUT/churn.md. Exits non-zero on a wrong body, a client error on a node that stayed up, or
upstream bytes over the design's bound. Bounded: the soak's own duration plus at most 180 s
for starting and stopping processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from procs import ROOT, find_binaries, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="soak duration (at least 60 for the record)")
    ap.add_argument("--event-every", type=int, default=3, help="seconds between membership events")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--bin-dir", help="directory holding casserole-node and casserole-churn (release)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "bench", "results"))
    args = ap.parse_args()
    bins = find_binaries(False, args.bin_dir)
    churn = os.path.join(bins, "casserole-churn")
    if not os.access(churn, os.X_OK):
        raise SystemExit(f"{churn} not found: build with "
                         "`CARGO_TARGET_DIR=target-bench cargo build --release -p casserole-node -p casserole-tests --bins`")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "churn.md")
    env = dict(os.environ, CASSEROLE_NODE_BIN=os.path.join(bins, "casserole-node"))
    cmd = [churn, f"--seconds={args.seconds}", f"--event-every={args.event_every}",
           f"--clients={args.clients}", f"--out={out}"]
    log(f"running {' '.join(cmd)}")
    try:
        rc = subprocess.run(cmd, env=env, timeout=args.seconds + 180).returncode
    except subprocess.TimeoutExpired:
        log("churn soak overran its time bound")
        return 1
    log(f"report in {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
