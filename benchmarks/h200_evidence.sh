#!/usr/bin/env bash
# The project's GPU evidence on the H200, run from a committed state (FLASHCORE_COMMIT=<sha> set by the caller):
#   benchmarks/h200_evidence.sh OUTDIR STAGE [STAGE ...]
# The cache is $DB (default /tmp/h200.db, kept out of OUTDIR: its claims folder alone would fill the files that
# come back); `save` copies it (gzipped) and its exported tables into OUTDIR, `load FILE.db.gz` restores it.
# Stages:
#   smoke      the Gluon kernel's first contact (benchmarks/gluon_smoke.py --quick, every launch in a child
#              process under a timeout), then the GQA and attention_kv GPU tests
#   tests      the GPU tests' fast tier (pytest -m "gpu and not slow"; GPU_MARK=gpu for all) in $JOBS parallel
#              processes with the 30 slowest durations, the timing tests apart
#   sweep:G[:DT]  `autotune sweep --grid G [--dtype DT]` with $TRIALS, $PATIENCE, $REP_MS, $BUDGET (seconds),
#              $KERNEL (candidates), $RETUNE (non-empty: --retune, e.g. to re-time backends)
#   bench:G[:DT]  `autotune bench --grid G` (own best kernel, served candidate, SDPA backends): JSON + PNG
#   validate   `autotune validate` of the cache and the shipped tables this toolchain serves here
#   models     benchmarks/real_models.py prefill and generate(), tuned vs SDPA ($MODELS_ARGS selects models,
#              dtypes, modes; $MODELS_TAG names the output; $MODELS_BUDGET seconds before no case starts)
#   save       the cache (gzip) and its export as JSON tables per dtype
#   seed       import the shipped H200 tables into the cache, so that a sweep tunes only the keys they lack
#   serving    the served path's GPU tests (sync-free, CUDA graphs, torch.compile, decode fast launch), the
#              attention_kv and fast-launch GPU tests
#   overhead   benchmarks/overhead.py: host cost of attention() against SDPA per kind of served candidate
# Each step logs into OUTDIR with its provenance (GPU, torch, Triton, commit, date) and prints its start time.
set -uo pipefail
out=$1; shift
db=${DB:-/tmp/h200.db}
export FLASHCORE_TRIAL_TIMEOUT=${FLASHCORE_TRIAL_TIMEOUT:-30}  # a hung config (a barrier bug) costs 30 s, not 120
at() { python3 -m flashcore.autotune "$@"; }
prov() {
  python3 - <<'PY'
import json, torch
from flashcore.autotune.core.toolchain import provenance
print("provenance:", json.dumps(provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability())))
PY
}
for stage in "$@"; do
  echo "=== $stage $(date -u +%FT%TZ)"
  IFS=: read -r name grid dtype <<<"$stage"
  tag=${grid:+-$grid}${dtype:+-$dtype}
  case $name in
    smoke) { prov; timeout "${SMOKE_TIMEOUT:-200}" python3 benchmarks/gluon_smoke.py --quick --keep-going; } 2>&1 \
             | tee "$out/gluon-smoke.log" | tail -30
           { prov; timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -x -n "${JOBS:-6}" \
               tests/test_attention_kv_gpu.py "tests/test_gpu.py::test_grouped_query_heads_compiled_match_fp32"; } \
               2>&1 | tee "$out/gpu-tests-new.log" | tail -8 ;;
    tests) { prov; timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m "${GPU_MARK:-gpu and not slow}" -q \
               -p no:cacheprovider -n "${JOBS:-6}" --durations=30 \
               --ignore=tests/test_gpu_timing.py ${GPU_K:+-k "$GPU_K"}
             timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_timing.py; } 2>&1 \
             | tee "$out/gpu-tests.log" | tail -12 ;;
    sweep) { prov; timeout "${SWEEP_TIMEOUT:-560}" python3 -m flashcore.autotune sweep --gpu h200 --grid "$grid" \
               ${dtype:+--dtype "$dtype"} --trials "${TRIALS:-10}" --patience "${PATIENCE:-5}" --rep-ms "${REP_MS:-20}" \
               ${BUDGET:+--time-budget "$BUDGET"} ${KERNEL:+--kernel "$KERNEL"} ${RETUNE:+--retune} --db "$db"; } 2>&1 \
             | tee "$out/sweep$tag.log" | grep -v "^  " | tail -6 ;;
    bench) at bench --gpu h200 --grid "$grid" ${dtype:+--dtype "$dtype"} --db "$db" --rep-ms "${BENCH_REP_MS:-20}" \
             --out "$out/bench$tag.json" --plot "$out/bench$tag.png" 2>&1 | tee "$out/bench$tag.log" | tail -8 ;;
    validate) { prov; at validate --gpu h200 --db "$db"; } 2>&1 | tee "$out/validate.log" | tail -6 ;;
    models) { prov; timeout "${MODELS_TIMEOUT:-420}" python3 benchmarks/real_models.py --db "$db" \
                --budget-s "${MODELS_BUDGET:-360}" ${MODELS_ARGS:-} --out "$out/real-models${MODELS_TAG:-}.json"; } \
              2>&1 | tee "$out/real-models${MODELS_TAG:-}.log" | tail -40 ;;
    save) gzip -c "$db" > "$out/h200.db.gz"
          python3 - "$db" "$out" <<'PY'
import json, sys
from flashcore.autotune.core.toolchain import provenance
from flashcore.cache import CacheStore, write_json
import torch
prov = provenance(torch.cuda.get_device_name(), "%d.%d" % torch.cuda.get_device_capability())
with CacheStore.open(sys.argv[1]) as store:
    winners = store.winners()
for dtype in sorted({w.key.dtype for w in winners}):
    chosen = [w for w in winners if w.key.dtype == dtype]
    write_json(chosen, f"{sys.argv[2]}/h200-{dtype}.json", provenance=prov)
    print(f"h200-{dtype}.json: {len(chosen)} entries")
PY
          ;;
    load) gunzip -c "$grid" > "$db" && echo "loaded $grid into $db" ;;
    seed) for t in cache/tables/h200-*.json; do at import "$t" --db "$db"; done 2>&1 | tail -4 ;;
    serving) { prov; timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -n "${JOBS:-4}" \
                 tests/test_gpu_serving.py tests/test_fastlaunch_gpu.py tests/test_attention_kv_gpu.py; } 2>&1 \
               | tee "$out/gpu-tests-serving.log" | tail -15 ;;
    overhead) { prov; timeout 300 python3 benchmarks/overhead.py --out "$out/overhead.json"; } 2>&1 \
                | tee "$out/overhead.log" | grep -v '^ ' | tail -12 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
