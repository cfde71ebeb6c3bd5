#!/usr/bin/env bash
# One GPU session, from the repository root, with wheels/ carried along (benchmarks/download_gpu_wheels.py):
# install the carried wheels (the GPU machine reaches no registry; --no-deps keeps its torch), run
# the three benchmarks, and copy their JSON and plots to $OUT when the session collects files there.
# Extra arguments go to every benchmark (e.g. --steps 5 to save device time).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-index --no-deps wheels/*.whl
for bench in unet peer scaling; do
  python benchmarks/bench_gpu_$bench.py "$@"
done
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/bench_gpu_* "$OUT"/
fi
