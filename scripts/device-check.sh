#!/usr/bin/env bash
# The CUDA backend's device check, for a machine with one NVIDIA GPU and a hetpar binary built
# elsewhere (the binary loads CUDA at run time, so an x86-64 build from any machine serves).
#
#   scripts/device-check.sh [path/to/hetpar] [report-file]
#
# Finds the CUDA libraries (LD_LIBRARY_PATH, the CUDA toolkit, pip's nvidia-* wheels; the
# binary links pip's libnccl.so.2 under the name it loads), then runs `hetpar device-check`:
# every operation against the CPU reference, a matrix-product throughput and a device-copy
# bandwidth figure. Everything has a time limit; the whole script stays under 5 minutes.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-}"
if [ -z "$bin" ]; then
  for b in "$here/../target/release/hetpar" "$here/hetpar" "./hetpar"; do
    if [ -x "$b" ]; then bin="$b"; break; fi
  done
fi
report="${2:-device-check-report.txt}"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "device-check: no hetpar binary (pass its path as the first argument)" >&2
  exit 2
fi

# Pip's wheels: put their lib directories on LD_LIBRARY_PATH (the binary also looks for them,
# this only makes the report say where they came from).
if command -v python3 >/dev/null; then
  wheels="$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "lib"))})))
PY
)"
  if [ -n "$wheels" ]; then export LD_LIBRARY_PATH="$wheels${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
fi

{
  echo "# hetpar device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "binary: $bin ($("$bin" --version 2>&1))"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  fi
  echo
  echo "## operations against the CPU reference; throughput; bandwidth"
  timeout 240 "$bin" device-check --gemm-size 8192 --copy-mib 1024
  echo "exit status: $?"
  echo
  echo "## training on the GPU"
  echo "not in this build: the CUDA executor of per-rank programs is the next step (issue 7)"
} 2>&1 | tee "$report"
status="$(grep -m1 '^exit status:' "$report" | awk '{print $3}')"
exit "${status:-1}"
