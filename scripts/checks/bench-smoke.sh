#!/usr/bin/env bash
# Smoke run of the benchmark harness (tests/bench/bench.py --smoke): tiny sizes, seconds. Uses the
# debug binaries scripts/test.sh built into ./target/debug (no release build needed). Asserts that
# the markdown table was produced and that the 3-node Casserole cluster fetched the cold object from
# the origin exactly once (amplification 1.00). nginx/Varnish/wrk are installed by the harness when
# missing (root + apt-get); if they cannot be, their rows are n/a and the check still runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# (the harness may first apt-get install nginx/varnish/wrk; its own run is bounded to ~3.5 min)
timeout 900 python3 tests/bench/bench.py --smoke --out "$out" > "$out/stdout.md"

fail() { echo "bench-smoke: $*" >&2; cat "$out/stdout.md" >&2; exit 1; }
[ -s "$out/results.md" ] || fail "no results.md"
grep -q '^| target | goal | measured | met |' "$out/results.md" || fail "no targets table"
grep -q '^#### 4. Upstream amplification' "$out/results.md" || fail "no amplification table"
python3 - "$out/results.json" <<'PY' || fail "amplification check failed"
import json, sys
r = json.load(open(sys.argv[1]))
amp = r["scenarios"]["amplification"]["casserole"]
value = amp["amplification"]
assert f"{value:.2f}" == "1.00", f"casserole cluster amplification {value:.4f}, want 1.00 ({amp})"
assert amp["origin_bytes"] == r["scenarios"]["amplification"]["size"], amp
print(f"bench-smoke: table produced; cluster amplification {value:.2f} "
      f"({amp['origin_bytes']} origin body bytes)")
PY
echo "bench-smoke: 1 passed, 0 failed"
