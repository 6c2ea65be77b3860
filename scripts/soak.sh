#!/usr/bin/env bash
# Soak run of the daemon crash test: SIGKILL `adjustd run` at random moments while it
# processes a stream of feeds, restart it, and check exactly-once at the end (reports,
# archive/failed, the store). The suite runs 50 iterations; this runs more, several rounds
# with fresh seeds, and prints the seed of any failure so it can be replayed with
#   ADJUSTD_CRASH_SEED=<seed> ADJUSTD_CRASH_ITERATIONS=<n> cargo test --test it crash::
# Usage: scripts/soak.sh [ITERATIONS_PER_ROUND] [ROUNDS]   (defaults 500 and 4)
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-500}
rounds=${2:-4}
cargo test --test it --no-run --quiet
for round in $(seq "$rounds"); do
  seed=$(( ($(date +%s%N) ^ (RANDOM << 16)) | 1 ))
  echo "round $round/$rounds: $iterations iterations, ADJUSTD_CRASH_SEED=$seed"
  if ! ADJUSTD_CRASH_SEED=$seed ADJUSTD_CRASH_ITERATIONS=$iterations \
      cargo test --quiet --test it crash:: -- --nocapture; then
    echo "FAILED: replay with ADJUSTD_CRASH_SEED=$seed ADJUSTD_CRASH_ITERATIONS=$iterations" >&2
    exit 1
  fi
done
echo "soak passed: $rounds rounds x $iterations kill/restart iterations"
