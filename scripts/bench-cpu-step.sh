#!/usr/bin/env bash
# One training step of the reference-shaped model (benches/reference-bench.json: LLM 4 layers,
# hidden 256, 8 heads, vocab 2048, seq 256, batch 8; vision 2 layers, hidden 128) in hetpar's
# CPU backend and in PyTorch f32, on 1 and 2 threads, and the ratio (docs/runtime.md).
#
#   scripts/bench-cpu-step.sh [python] [hetpar-binary ...]
#
# python: an interpreter with torch (default: python3). Each hetpar binary given (e.g. an older
# build) is timed beside the one built here, one step per thread count in the first round only
# (the f64 loops of old builds take most of a minute a step). hetpar on 2 threads is 2 ranks (dp 2: a rank is a
# thread), and also 1 rank whose products split over 2 threads (HETPAR_GEMM_THREADS=2); PyTorch on
# 2 threads is torch.set_num_threads(2). Rounds interleave the runs, and each
# figure is the fastest step of all rounds (other work on the machine only slows a step down).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
shift || true
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-3}
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet --bin hetpar
BINS=(target/release/hetpar "$@")

# The fastest step (s) of a `hetpar run` (its table: step, loss, time in ms).
hetpar_step() { # binary ranks steps
    local plan=benches/reference-bench-1.json cluster=examples/clusters/cpu-1.json
    if [ "$2" = 2 ]; then plan=benches/reference-bench-dp2.json cluster=examples/clusters/cpu-2.json; fi
    "$1" run "$plan" --model benches/reference-bench.json --cluster "$cluster" --steps "$3" 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && NF == 3 { t = $3 / 1000; if (best == "" || t < best) best = t } END { print best }'
}
torch_step() { # threads
    OMP_NUM_THREADS=$1 "$PY" benches/torch_step.py --threads "$1" --steps "$STEPS" | awk '/^torch_step_s/ { print $2 }'
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || (b != "" && b < a)) print b; else print a }'; }

declare -A best
for ((r = 0; r < ROUNDS; r++)); do
    for t in 1 2; do
        best[h0.$t]=$(min "${best[h0.$t]:-}" "$(hetpar_step "${BINS[0]}" "$t" "$STEPS")")
        for ((i = 1; i < ${#BINS[@]} && r == 0; i++)); do
            best[h$i.$t]=$(hetpar_step "${BINS[$i]}" "$t" 1)
        done
        best[torch.$t]=$(min "${best[torch.$t]:-}" "$(torch_step "$t")")
    done
    best[gemm2]=$(min "${best[gemm2]:-}" "$(HETPAR_GEMM_THREADS=2 hetpar_step "${BINS[0]}" 1 "$STEPS")")
done

echo "reference-bench, one training step, fastest of $ROUNDS rounds x $STEPS steps ($(nproc) cores)"
printf '%-8s %-34s %10s %16s\n' threads what "step (s)" "hetpar / torch"
for t in 1 2; do
    for i in "${!BINS[@]}"; do
        printf '%-8s %-34s %10.3f %16.2f\n' "$t" "hetpar ${BINS[$i]}" "${best[h$i.$t]}" \
            "$(awk -v a="${best[h$i.$t]}" -v b="${best[torch.$t]}" 'BEGIN { print a / b }')"
    done
    if [ "$t" = 2 ]; then
        printf '%-8s %-34s %10.3f %16.2f\n' 2 "hetpar, 1 rank, 2 GEMM threads" "${best[gemm2]}" \
            "$(awk -v a="${best[gemm2]}" -v b="${best[torch.2]}" 'BEGIN { print a / b }')"
    fi
    printf '%-8s %-34s %10.3f\n' "$t" "torch $("$PY" -c 'import torch; print(torch.__version__)')" "${best[torch.$t]}"
done
