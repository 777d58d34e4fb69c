#!/usr/bin/env bash
# The project's GPU evidence, run on the H100 from a committed state:
#   FLASHCORE_COMMIT=<sha> benchmarks/gpu_evidence.sh OUTDIR STAGE [STAGE ...]
# Stages: tests, small, fault, default, times, study, bench, overhead. Each writes its log/JSON/PNG into OUTDIR, each
# headed by its provenance (GPU, torch, triton, commit, date); the cache file is $DB (default OUTDIR/h100.db).
set -uo pipefail
out=$1; shift
db=${DB:-$out/h100.db}
at() { python3 -m autotune "$@"; }
prov() {
  python3 - <<'PY'
import json, torch
from autotune._toolchain import provenance
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
    default) { prov; timeout "${SWEEP_TIMEOUT:-3600}" python3 -m autotune sweep --gpu h100 --grid default --trials "${TRIALS:-20}" --rep-ms "${REP_MS:-100}" --db "$db"; } 2>&1 \
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
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
