#!/usr/bin/env bash
# The project's GPU evidence, run on the H100 from a committed state:
#   FLASHCORE_COMMIT=<sha> benchmarks/gpu_evidence.sh OUTDIR STAGE [STAGE ...]
# Stages: tests, small, fault, default, times, study, bench, overhead, fp8. Each writes its log/JSON/PNG into OUTDIR,
# each headed by its provenance (GPU, torch, triton, commit, date); the cache file is $DB (default OUTDIR/h100.db).
# fp8 (~4 min): FP8 sweeps of the long grid under the budgets 0.1 and 0.03 into $FP8_DB (default
# OUTDIR/h100-fp8.db), each bounded by --time-budget (FP8_SWEEP_S 50, FP8_SWEEP_TOL_S 30 seconds; a point not
# reached is served "nearest" by the bench, and running the stage again resumes it), then a bench per budget against
# the tuned fp16 kernel of $DB (the default stage's cache; required) and the per-recipe table (fp8-report.md).
# Knobs: FP8_TRIALS (12), FP8_PATIENCE (4), FP8_REP_MS (sweep, 20), FP8_BENCH_REP_MS (10),
# FP8_REPORT_POINT (8,16,4096,128). Each step prints its start time.
set -uo pipefail
out=$1; shift
db=${DB:-$out/h100.db}
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
  case $stage in
    tests) { prov; timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -m gpu -q -p no:cacheprovider ${GPU_K:+-k "$GPU_K"}; } 2>&1 | tee "$out/gpu-tests.log" | tail -5 ;;
    small) { prov; at sweep --gpu h100 --grid small --rep-ms "${REP_MS:-100}" --db "$db"; } 2>&1 | tee "$out/sweep-small.log" | tail -14
           at export --db "$db" --format json -o "$out/sweep-small.json" ;;
    fault) { prov; FLASHCORE_FAULT_INJECTION=1 at sweep --gpu h100 --grid smoke --kernel attention_fwd_faulty \
               --trials 4 --db "$out/fault.db"; } 2>&1 | tee "$out/fault-sweep.log" | tail -12 ;;
    default) { prov; timeout "${SWEEP_TIMEOUT:-3600}" python3 -m flashcore.autotune sweep --gpu h100 --grid default --trials "${TRIALS:-20}" --rep-ms "${REP_MS:-100}" --db "$db"; } 2>&1 \
               | tee "$out/sweep-default.log" | tail -40
             at export --db "$db" --format json -o "$out/h100-float16.json" ;;
    times) { prov; python3 benchmarks/sweep_times.py --out "$out/sweep-times.json" --db "$db" --logs "$out" \
               --rep-ms "${REP_MS:-50}" ${TRIALS:+--trials "$TRIALS"} --default-timeout "${SWEEP_TIMEOUT:-600}"; } \
               2>&1 | tee "$out/sweep-times.log" | tail -25
           at export --db "$db" --format json -o "$out/h100-float16.json" ;;
    study) { prov; at study-search --gpu h100 --grid "${STUDY_GRID:-small}" --seeds "${SEEDS:-5}" --rep-ms "${REP_MS:-50}" \
               --out "$out/search-study.json" --plot "$out/search-study.png"; } 2>&1 | tee "$out/search-study.log" | tail -25 ;;
    bench) at bench --gpu h100 --grid "${GRID:-default}" --db "$db" --out "$out/bench-${GRID:-default}.json" \
             --plot "$out/bench-${GRID:-default}.png" 2>&1 | tee "$out/bench-${GRID:-default}.log" | tail -45 ;;
    overhead) python3 benchmarks/overhead.py --db "$db" --out "$out/overhead.json" 2>&1 | tail -30 ;;
    fp8) [ -f "$db" ] || { echo "fp8: no fp16 cache at $db for the tuned provider (run the default stage or set DB)"; exit 2; }
         fdb=${FP8_DB:-$out/h100-fp8.db}
         sw() { at sweep --gpu h100 --grid long --dtype fp8 --trials "${FP8_TRIALS:-12}" --patience "${FP8_PATIENCE:-4}" \
                  --rep-ms "${FP8_REP_MS:-20}" --db "$fdb" "$@"; }
         { prov; sw --time-budget "${FP8_SWEEP_S:-50}"; } 2>&1 | tee "$out/sweep-fp8.log" | tail -30
         echo "--- $(date -u +%T) fp8-tol0.03"
         { prov; sw --fp8-tol 0.03 --time-budget "${FP8_SWEEP_TOL_S:-30}"; } 2>&1 | tee "$out/sweep-fp8-tol0.03.log" | tail -30
         at export --db "$fdb" --format json -o "$out/h100-fp8.json"
         for tol in 0.1 0.03; do
           name=bench-fp8$([ "$tol" = 0.1 ] || echo "-tol$tol")
           echo "--- $(date -u +%T) $name"
           at bench --gpu h100 --grid long --dtype fp8 --fp8-tol "$tol" --db "$fdb" --fp16-db "$db" \
             --rep-ms "${FP8_BENCH_REP_MS:-10}" --out "$out/$name.json" --plot "$out/$name.png" 2>&1 \
             | tee "$out/$name.log" | tail -36
         done
         echo "--- $(date -u +%T) recipes"
         { python3 benchmarks/fp8_report.py recipes --db "$fdb" --fp16-db "$db" --point "${FP8_REPORT_POINT:-8,16,4096,128}" \
             --gpu h100 --rep-ms "${FP8_BENCH_REP_MS:-10}" --out "$out/fp8-recipes.json"; echo
           python3 benchmarks/fp8_report.py bench "$out/bench-fp8.json" "$out/bench-fp8-tol0.03.json"; } 2>&1 \
           | tee "$out/fp8-report.md" | head -20
         echo "--- $(date -u +%T) fp8 done" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
