#!/usr/bin/env bash
# The composition's report over the example plans (docs/boundary.md, "Composition"): for every
# boundary whose producer is a tensor-parallel projector, the direct program's time against the
# chosen one's, forward and backward, and the plan's simulated step with the direct programs
# and with the chosen ones, side by side, with the cost model's stated error of a step time.
#
#   scripts/compose-report.sh [hetpar-binary] [gpu-model]
#
# hetpar-binary: default target/release/hetpar, built here. gpu-model (e.g. a100_80gb): run
# every plan on its cluster with that GPU instead, the links left to the GPU's own figures.
# Prints a markdown table. Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
GPU=${2:-}
if [ -z "$BIN" ]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet --bin hetpar
    BIN=target/release/hetpar
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

ms() { awk -v s="$1" 'BEGIN { printf "%.4f ms", s * 1000 }'; }
echo "| plan | boundary | forward direct | forward chosen | backward direct | backward chosen | step direct | step chosen | change | stated error |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for plan in examples/plans/*.json; do
    model=examples/models/$(jq -r .model "$plan").json
    cluster=examples/clusters/$(jq -r .cluster "$plan").json
    if [ -n "$GPU" ]; then
        jq --arg g "$GPU" '.gpu = {model: $g} | del(.intra_node, .inter_node)' "$cluster" >"$TMP/cluster.json"
        cluster=$TMP/cluster.json
    fi
    "$BIN" reshard --model "$model" --cluster "$cluster" --plan "$plan" --format json --step \
        -o "$TMP/out.json"
    name=$(basename "$plan" .json)
    jq -c '.boundaries[]' "$TMP/out.json" | while read -r b; do
        # Only a tensor-parallel projector's boundaries compose (their program is a term);
        # elsewhere the transfer is the whole program.
        prog=$(jq -r '.forward.egraph.program' <<<"$b")
        [ -n "$prog" ] || continue
        step=$(jq -c .step "$TMP/out.json")
        fd=$(jq -r .forward.egraph.direct_time_s <<<"$b")
        fc=$(jq -r .forward.time_s <<<"$b")
        bd=$(jq -r .backward.egraph.direct_time_s <<<"$b")
        bc=$(jq -r .backward.time_s <<<"$b")
        bprog=$(jq -r .backward.egraph.program <<<"$b")
        sd=$(jq -r .direct_s <<<"$step")
        sc=$(jq -r .chosen_s <<<"$step")
        err=$(jq -r .stated_error <<<"$step")
        change=$(awk -v d="$sd" -v c="$sc" 'BEGIN { printf "%+.3f ms (%+.4f%%)", (c - d) * 1000, (c / d - 1) * 100 }')
        printf '| `%s` | `%s` | %s | %s `%s` | %s | %s `%s` | %.6f s | %.6f s | %s | %.1f%% |\n' \
            "$name" "$(jq -r .name <<<"$b")" "$(ms "$fd")" "$(ms "$fc")" "$prog" \
            "$(ms "$bd")" "$(ms "$bc")" "$bprog" "$sd" "$sc" "$change" \
            "$(awk -v e="$err" 'BEGIN { print e * 100 }')"
    done
done
