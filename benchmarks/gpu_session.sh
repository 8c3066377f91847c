#!/usr/bin/env bash
# The GPU checks of one short device session, prepared so that the whole of it is one command:
#
#     bash benchmarks/gpu_session.sh [OUT]        # OUT: where everything goes (default gpu-session/)
#
#   1. python benchmarks/throughput.py on the paper's configs (depth 2, 4, 6 at batch 1024, bf16,
#      compile): steps/s, tokens/s, MFU                          -> OUT/throughput.{txt,json}
#   2. pytest tests/test_gpu.py (bf16, compile, fused AdamW, resume) -> OUT/test_gpu.txt
#   3. grids/laptop.yaml on the GPU, four trials sharing it (resources gpu 0.25), with its wall
#      time; its phase table                                      -> OUT/laptop/, OUT/laptop.txt
#
# Each step has its own time limit (LIMIT_*) so that one stuck step cannot spend the session, and
# a failed step does not stop the next: the summary at the end says which passed. Device time is
# counted from the machine's start, so run it at once, then hand the machine back.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-session}
mkdir -p "$out"
declare -A rc

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv" 2>&1

timeout "${LIMIT_THROUGHPUT:-240}" python benchmarks/throughput.py --configs paper-d2 paper-d4 paper-d6 \
  --json "$out/throughput.json" > "$out/throughput.txt" 2>&1
rc[throughput]=$?

timeout "${LIMIT_TESTS:-120}" python -m pytest tests/test_gpu.py -q -p no:cacheprovider > "$out/test_gpu.txt" 2>&1
rc[test_gpu]=$?

# the laptop grid as it is, but on the GPU: device cuda, a quarter of the GPU a trial
python - "$out/laptop-gpu.yaml" <<'PY'
import sys, yaml
grid = yaml.safe_load(open("grids/laptop.yaml"))
grid["name"] = "laptop-gpu"
grid["base"]["runtime"].update(device="cuda", threads=1)
grid["resources"] = {"cpu": 1, "gpu": 0.25}
grid["run"]["max_concurrent"] = 4
yaml.safe_dump(grid, open(sys.argv[1], "w"), sort_keys=False)
PY
start=$(date +%s)
timeout "${LIMIT_LAPTOP:-300}" ray-grok launch "$out/laptop-gpu.yaml" --out "$out/laptop" > "$out/laptop.txt" 2>&1
rc[laptop]=$?
echo "wall time of the laptop grid on the GPU: $(( $(date +%s) - start )) s" >> "$out/laptop.txt"
ray-grok phases "$out/laptop" >> "$out/laptop.txt" 2>&1

for step in throughput test_gpu laptop; do
  echo "$step: exit ${rc[$step]} $([ "${rc[$step]}" = 124 ] && echo '(its time limit)')"
done | tee "$out/summary.txt"
tail -n 20 "$out/throughput.txt" "$out/test_gpu.txt" "$out/laptop.txt"
