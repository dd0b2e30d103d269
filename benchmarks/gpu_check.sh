#!/usr/bin/env bash
# The GPU check of issue 10, one script that finishes in under 8 minutes on one GPU:
#
#   1. training slices/s of today's pipeline ("plain") and the fast path at 256 px, joint strategy,
#      batch 16 and a larger batch (benchmarks/bench_train.py: GPU memory and busy share too);
#   2. the wall time of a reduced --full table (joint, seg_baseline x scratch, lits x 2 folds at the
#      --full settings but fewer epochs, --runs-per-device K), stopped after --budget seconds if it
#      has not finished, and the whole table extrapolated from its finished runs with the arithmetic
#      written out (benchmarks/table_estimate.py).
#
# Data: the --full preset's phantoms (monai-liver phantoms: 20 LiTS-like volumes of 256x256x64,
# 140 patients / 332 lesion-type slices of 256 px), made once in the work folder.
#
#   benchmarks/gpu_check.sh                  # on a GPU machine, from the repository root
#   benchmarks/gpu_check.sh --cpu-smoke      # every step at tiny sizes on the CPU (~1-2 min): the script's check
#   benchmarks/gpu_check.sh --dry-run        # print the commands, run nothing
#
# Without a GPU (and without --cpu-smoke / --dry-run) it stops at once with exit status 2.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benchmarks/gpu_check.sh [--cpu-smoke] [--dry-run] [--out DIR] [--budget SECONDS] [--epochs N]
                               [--pretrain-epochs N] [--runs-per-device K] [--big-batch N] [--isolation MODE]

  --cpu-smoke          tiny sizes on the CPU (the script's own check; its figures say nothing of a GPU)
  --dry-run            print the commands and exit
  --out DIR            work folder (default: a new folder under ${TMPDIR:-/tmp}); kept afterwards
  --budget SECONDS     the reduced table is stopped (Ctrl-C, resumable) after this long (default 210)
  --epochs N           epochs of each strategy run of the reduced table (default 20; --full has 100)
  --pretrain-epochs N  epochs of lits_pretrain and of the liver localiser (default 10; --full has 50)
  --runs-per-device K  runs at a time on each GPU in the reduced table (default 2)
  --big-batch N        the larger batch of the benchmark (default 64)
  --isolation MODE     inprocess (default) or subprocess (the --full preset's own default)
EOF
}

SMOKE=0 DRY=0 OUT="" BUDGET=210 EPOCHS=20 PRE_EPOCHS=10 K=2 BIG_BATCH=64 ISOLATION=inprocess
number() {  # number FLAG VALUE: VALUE must be a positive whole number
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 takes a positive whole number (got '$2')" >&2; exit 2; }
}
while (($#)); do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --dry-run) DRY=1 ;;
        -h|--help) usage; exit 0 ;;
        --out|--budget|--epochs|--pretrain-epochs|--runs-per-device|--big-batch|--isolation)
            (($# >= 2)) || { echo "error: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --out) OUT="$2" ;;
                --budget) number "$1" "$2"; BUDGET="$2" ;;
                --epochs) number "$1" "$2"; EPOCHS="$2" ;;
                --pretrain-epochs) number "$1" "$2"; PRE_EPOCHS="$2" ;;
                --runs-per-device) number "$1" "$2"; K="$2" ;;
                --big-batch) number "$1" "$2"; BIG_BATCH="$2" ;;
                --isolation) [[ "$2" == inprocess || "$2" == subprocess ]] \
                    || { echo "error: --isolation is inprocess or subprocess (got '$2')" >&2; exit 2; }; ISOLATION="$2" ;;
            esac
            shift ;;
        *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$(date +%s)

if ((SMOKE)); then  # every step, tiny
    DEVICE=cpu
    PHANTOMS=(--lits-volumes 2 --lits-shape 64 64 16 --patients 8 --slices 16 --size 64)
    BENCH=(--device cpu --backbone basicunet-small --image-size 32 --slices 16 --epochs 2)
    BATCHES=(4 8)
    TABLE=(--image-size 32 --localiser-image-size 32 --backbone basicunet-small --batch-size 4 --max-slices 4)
    EPOCHS=1 PRE_EPOCHS=1
else  # the --full preset's data and sizes
    DEVICE=cuda
    PHANTOMS=(--lits-volumes 20 --lits-shape 256 256 64 --patients 140 --slices 332 --size 256)
    BENCH=(--device cuda --image-size 256 --slices 332 --epochs 8 --num-workers 4)  # plain: --full's 4 loader workers
    BATCHES=(16 "$BIG_BATCH")
    TABLE=()
fi
OUT="${OUT:-${TMPDIR:-/tmp}/gpu_check.$(date +%Y%m%d-%H%M%S)}"
TABLE_CMD=("$PY" -m monai_liver experiment --full --out "$OUT/table" --manifest "$OUT/phantoms/lesions/manifest.csv"
           --lits "$OUT/phantoms/lits" --strategies joint seg_baseline --inits scratch lits --folds 2
           --epochs "$EPOCHS" --lits-epochs "$PRE_EPOCHS" --localiser-epochs "$PRE_EPOCHS" ${TABLE[@]+"${TABLE[@]}"}
           --device "$DEVICE" --no-download --phantoms --isolation "$ISOLATION" --runs-per-device "$K")

if ((DRY)); then
    echo "work folder: $OUT"
    echo "$PY -m monai_liver phantoms --out $OUT/phantoms ${PHANTOMS[*]}"
    echo "$PY -m monai_liver datalist --manifest $OUT/phantoms/lesions/manifest.csv --out $OUT/lesions.json --folds 5"
    for b in "${BATCHES[@]}"; do
        echo "$PY benchmarks/bench_train.py --strategy joint --datalist $OUT/lesions.json --batch-size $b ${BENCH[*]}"
    done
    echo "timeout --signal=INT --kill-after=120 $BUDGET ${TABLE_CMD[*]}"
    echo "$PY benchmarks/table_estimate.py $OUT/table --slots <GPUs x $K> --rest <seconds outside the runs>"
    exit 0
fi

# -- the machine: fail fast without a GPU
echo "== machine"
if ! "$PY" - "$SMOKE" <<'EOF'
import os, sys
import torch
smoke = sys.argv[1] == "1"
print(f"   PyTorch {torch.__version__}, CUDA {torch.version.cuda}, CPU threads {torch.get_num_threads()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"   GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
elif not smoke:
    print("error: no GPU is visible to PyTorch (torch.cuda.is_available() is False; CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}): this script measures a GPU. "
          "Run it with --cpu-smoke to check the script itself on a CPU.", file=sys.stderr)
    sys.exit(2)
else:
    print("   no GPU: --cpu-smoke, tiny sizes on the CPU (these figures say nothing of a GPU)")
EOF
then
    exit 2
fi
command -v nvidia-smi >/dev/null && ((! SMOKE)) && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/   nvidia-smi: /' || true
mkdir -p "$OUT"
echo "   work folder: $OUT (kept; logs in it)"

step() {  # step NAME LOG COMMAND...: run, output to LOG, print its time
    local name="$1" log="$2" t0 rc=0
    shift 2
    echo "== $name"
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1 || rc=$?
    awk -v n="$name" -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "   %s: %.1f s\n", n, b - a }'
    if ((rc)); then
        echo "error: $name failed (exit $rc); the end of $log:" >&2
        tail -n 15 "$log" >&2
        exit 1
    fi
}

# -- data, once
step "phantoms" "$OUT/phantoms.log" "$PY" -m monai_liver phantoms --out "$OUT/phantoms" "${PHANTOMS[@]}"
step "datalist (5 folds)" "$OUT/datalist.log" "$PY" -m monai_liver datalist \
    --manifest "$OUT/phantoms/lesions/manifest.csv" --out "$OUT/lesions.json" --folds 5

# -- 1. training slices/s: today's pipeline against the fast path
for b in "${BATCHES[@]}"; do
    step "bench_train joint, batch $b" "$OUT/bench_batch$b.log" "$PY" benchmarks/bench_train.py --strategy joint \
        --datalist "$OUT/lesions.json" --batch-size "$b" "${BENCH[@]}"
    grep -E "^(joint|way|plain|fast)" "$OUT/bench_batch$b.log" | sed 's/^/   /' || true
done

# -- 2. the reduced --full table, stopped after the budget
SLOTS=$("$PY" -c "from monai_liver.experiment.parallel import plan_slots; print(len(plan_slots('$DEVICE', $K)))")
echo "== reduced --full table (stopped after $BUDGET s): ${TABLE_CMD[*]}"
t0=$(date +%s)
rc=0
timeout --signal=INT --kill-after=120 "$BUDGET" "${TABLE_CMD[@]}" >"$OUT/table.log" 2>&1 || rc=$?
WALL=$(($(date +%s) - t0))
grep -E "^   (local:|done |runs [0-9])" "$OUT/table.log" | sed 's/^/ /' || true
if ((rc == 124)); then
    echo "   stopped after the budget ($BUDGET s): the runs that finished are extrapolated"
elif ((rc)); then
    echo "error: the reduced table failed (exit $rc); the end of $OUT/table.log:" >&2
    tail -n 15 "$OUT/table.log" >&2
    exit 1
fi
echo "   reduced table: $WALL s wall ($SLOTS run(s) at a time)"
# the time outside the runs: the command's wall minus runs.log's first start to last done
REST=$("$PY" - "$OUT/table/runs.log" "$WALL" <<'EOF'
import sys
from datetime import datetime
stamps = [datetime.strptime(" ".join(l.split()[:2]), "%Y-%m-%d %H:%M:%S") for l in open(sys.argv[1]) if l.strip()]
print(max(0.0, float(sys.argv[2]) - (max(stamps) - min(stamps)).total_seconds()) if stamps else sys.argv[2])
EOF
)

echo "== the whole --full table, extrapolated"
"$PY" benchmarks/table_estimate.py "$OUT/table" --slots "$SLOTS" --rest "$REST" | sed 's/^/   /' || true
echo "== gpu_check: $(($(date +%s) - START)) s in all; logs and folders in $OUT"
