#!/usr/bin/env bash
# The CUDA backend's device check, for a machine with one NVIDIA GPU and a hetpar binary built
# elsewhere (the binary loads CUDA at run time, so an x86-64 build from any machine serves).
#
#   scripts/device-check.sh [path/to/hetpar] [report-file]
#
# The device's calibration (`hetpar profile --backend cuda`) is kept beside the report, as
# <report-file without its extension>.calibration.json.
#
# Finds the CUDA libraries (LD_LIBRARY_PATH, the CUDA toolkit, pip's nvidia-* wheels; the
# binary links pip's libnccl.so.2 under the name it loads), then runs `hetpar device-check`:
# every operation against the CPU reference, NCCL on one GPU, a matrix-product throughput and
# a device-copy bandwidth figure, the reference model trained 20 steps under two plans on the
# CPU and the GPU (f32 and bf16 products), a stack of 4 Llama-3-8B layers at sequence 4096
# trained in bf16 (step time, model TFLOP/s, MFU); then the same plan as 8 processes sharing the GPU
# against 8 threads; then `hetpar profile --backend cuda` on the device's cluster (products,
# attention, memory-bound kernels, per-kernel cost) written as a calibration file. Everything
# has a time limit; the whole script stays under 10 minutes.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-}"
if [ -z "$bin" ]; then
  for b in "$here/../target/release/hetpar" "$here/hetpar" "./hetpar"; do
    if [ -x "$b" ]; then bin="$b"; break; fi
  done
fi
report="${2:-device-check-report.txt}"
calibration="${report%.*}.calibration.json"
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
  timeout 180 "$bin" device-check --gemm-size 8192 --copy-mib 1024 --llama-steps 0
  checked=$?
  echo "exit status: $checked"
  # 2: no device or library; nothing more to learn here.
  [ "$checked" = 2 ] && exit 0
  echo
  echo "## a stack of 4 Llama-3-8B layers, sequence 4096, bf16 products: step time, TFLOP/s, MFU"
  timeout 120 "$bin" device-check --steps 0 --gemm-size 1024 --copy-mib 64 --llama-steps 4 \
    | grep -E "^llama stack"
  echo "exit status: ${PIPESTATUS[0]}"
  echo
  echo "## ranks as processes on the GPU: launch (8 processes, TCP) against run (8 threads)"
  ex="$here/../examples"
  args=("$ex/plans/reference-tiny-noncolocated-8.json" --model "$ex/models/reference-tiny.json"
        --cluster "$ex/clusters/h100-8.json" --steps 3 --backend cuda --gpu 0)
  threads="$(timeout 45 "$bin" run "${args[@]}" 2>&1)"; echo "$threads"
  procs="$(timeout 45 "$bin" launch "${args[@]}" --nproc-per-node 8 2>&1)"; echo "$procs"
  losses() { awk '$1 ~ /^[0-9]+$/ && NF >= 3 {print $2}'; }
  if [ -n "$(echo "$threads" | losses)" ] && \
     [ "$(echo "$threads" | losses)" = "$(echo "$procs" | losses)" ]; then
    echo "launch status: same losses"
  else
    echo "launch status: FAILED (the losses differ or a run failed)"
  fi
  echo
  echo "## profile: the device as a calibration file"
  # The cluster file of the device's model (only H100 ones ship; another GPU is profiled as one,
  # and the file says h100_sxm_80gb).
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
  case "$gpu_name" in
    *H100*) ;;
    *) echo "no cluster file for \"${gpu_name:-an unnamed GPU}\": profiled as an H100" ;;
  esac
  cluster="$ex/clusters/h100-8.json"
  if timeout 150 "$bin" profile --backend cuda --cluster "$cluster" -o "$calibration"; then
    echo "profile status: ok, calibration in $calibration"
  else
    echo "profile status: FAILED (exit status $?)"
  fi
} 2>&1 | tee "$report"
status="$(grep -m1 '^exit status:' "$report" | awk '{print $3}')"
if grep -q '^launch status: FAILED' "$report"; then status=1; fi
if grep -q '^profile status: FAILED' "$report"; then status=1; fi
exit "${status:-1}"
