#!/usr/bin/env bash
# One GPU call that re-measures what the committed GPU numbers come from, in the order that matters
# if the call is cut short (each step writes its JSON and log as it goes):
#   1. bench/kernels.py            decode kernels vs peers, INT8 modes checked and tuned (issue 4)
#   2. kvsim profile smollm2-135m  the calibrated profile of this GPU (issue 8)
#   3. bench/fidelity.py           analytic vs compute on held-out trace rows (FIDELITY_OFFSET, default 1500; rows
#                                  0-10000 were scored by 2026-12-06 14:20: take 10000 on; FIDELITY_TRACE names the full Azure
#                                  conv trace, carried, for rows past the shipped 2,000), with its replays;
#                                  FIDELITY_REPEAT=N runs each compute configuration N times more (run-to-run spread)
#   4. bench/step_overhead.py      where a step's time goes (host, GPU, block-table width)
#   5. bench/decode_order.py       where the long sequence sits in a decode batch (only with DECODE_ORDER_S > 0)
#   6. bench/graph_check.py        CUDA-graph steps against eager ones, H2O's scored mixed step too (GRAPH_CHECK_S > 0;
#                                  --random-weights unless GRAPH_CHECK_ARGS says otherwise: the real weights' package,
#                                  93 MB, is more than the device tool carries)
# Usage (device tool): bash bench/gpu_round.sh    # writes to $OUT (else bench/results/)
# Times per part in seconds: KERNELS_S, PROFILE_S, FIDELITY_S, STEP_OVERHEAD_S, DECODE_ORDER_S (defaults
# below, ~13 minutes in all: more than one device call's 10; with the profile's serving runs, PROFILE_S is 300).
# KERNELS_S=0 skips part 1 and STEP_OVERHEAD_S=0 part 4 (a profile and fidelity alone: ~8 minutes; the device
# tool brings back 8 files); part 5 runs only when DECODE_ORDER_S is set, e.g. with KERNELS_S=0 STEP_OVERHEAD_S=0.
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
G=$(python3 -c "import torch; from engine.gpus import get_gpu; print(get_gpu(torch.cuda.get_device_name()).name)")
echo "gpu preset: $G"
if [ "${KERNELS_S:-150}" -gt 0 ]; then
    timeout "${KERNELS_S:-150}" python3 bench/kernels.py --budget-s $(( ${KERNELS_S:-150} - 20 )) > "$OUT/kernels_$G.log" 2>&1
    tail -45 "$OUT/kernels_$G.log"
fi
python3 -m kvsim.cli profile --model smollm2-135m --budget-s "${PROFILE_S:-300}" \
    --out "$OUT/smollm2-135m_$G.json" > "$OUT/profile_$G.log" 2>&1
tail -16 "$OUT/profile_$G.log"
timeout $(( ${FIDELITY_S:-200} + 60 )) python3 bench/fidelity.py --random-weights --offset "${FIDELITY_OFFSET:-1500}" \
    ${FIDELITY_TRACE:+--trace "$FIDELITY_TRACE"} --repeat "${FIDELITY_REPEAT:-0}" \
    --profile "$OUT/smollm2-135m_$G.json" --budget-s "${FIDELITY_S:-200}" > "$OUT/fidelity_$G.log" 2>&1
grep -v "fit rows" "$OUT/fidelity_$G.log" | tail -40
if [ "${STEP_OVERHEAD_S:-100}" -gt 0 ]; then
    timeout "${STEP_OVERHEAD_S:-100}" python3 -m bench.step_overhead --out "$OUT/step_overhead_$G.json" \
        > "$OUT/step_overhead_$G.log" 2>&1
    tail -24 "$OUT/step_overhead_$G.log"
fi
if [ "${DECODE_ORDER_S:-0}" -gt 0 ]; then
    timeout "${DECODE_ORDER_S}" python3 -m bench.decode_order --out "$OUT/decode_order_$G.json" > "$OUT/decode_order_$G.log" 2>&1
    tail -10 "$OUT/decode_order_$G.log"
fi
[ "${GRAPH_CHECK_S:-0}" -gt 0 ] || exit 0
timeout "${GRAPH_CHECK_S}" python3 bench/graph_check.py ${GRAPH_CHECK_ARGS---random-weights} --out "$OUT" \
    > "$OUT/graph_check_$G.log" 2>&1
tail -6 "$OUT/graph_check_$G.log"
