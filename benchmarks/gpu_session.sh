#!/usr/bin/env bash
# Everything that needs a GPU, in few calls: a lent GPU machine's time is short and it cannot
# download anything. Three steps:
#
#   bash benchmarks/gpu_session.sh prepare   # here: copy the data into .device/data (git-ignored)
#   bash benchmarks/gpu_session.sh smoke     # there: every model, sampling, eval, torchrun on CUDA
#   bash benchmarks/gpu_session.sh bench     # there: the GPU benchmarks of benchmarks/README.md
#
# `smoke` fits in one 10-minute call; `bench` may not, so it comes in halves too: `bench-gan`
# (train_throughput.py) and `bench-rest` (GPT time to loss, DDP overhead). Carry `.device`. Every result goes
# to $OUT (the device tool's output folder; ./gpu-out by default): `<step>.log` per step and the
# benchmarks' JSON lines in `bench.jsonl`; `summary.txt` lists each step's exit status. A failing
# step does not stop the others. DEVICE=cpu runs the same steps on the CPU, to check this script.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
DATA=.device/data
PY=${PYTHON:-python3}
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run, log, record the exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.log"
}

install() {  # the GPU machine has torch and the common packages; install genlab alone
    if ! "$PY" -c "import genlab" 2>/dev/null; then
        "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1
    fi
    "$PY" - <<'EOF' | tee -a "$OUT/summary.txt"
import importlib, torch
missing = [m for m in ("numpy", "PIL", "safetensors", "tqdm", "click", "sklearn", "matplotlib")
           if importlib.util.find_spec(m) is None]
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "missing:", missing)
EOF
}

case "${1:-}" in
prepare)
    mkdir -p "$DATA/fashion-mnist"
    cp /usr/share/datasets/fashion-mnist/*.gz "$DATA/fashion-mnist/"
    cp ../shared/data/tinyshakespeare/input.txt "$DATA/input.txt"
    du -sh .device
    ;;
smoke)
    install
    G=(-m genlab)
    runs=$OUT/runs
    common=(--device "$DEVICE" --precision auto --set train.sample_every=0)
    step dcgan 300 "$PY" "${G[@]}" train dcgan --data fashion-mnist --data-dir "$DATA/fashion-mnist" \
        --steps 200 --out "$runs/dcgan" "${common[@]}" --eval-every 100
    step dcgan-cond-hinge 300 "$PY" "${G[@]}" train dcgan --data fashion-mnist --conditional \
        --data-dir "$DATA/fashion-mnist" --steps 100 --set model.loss=hinge --out "$runs/cdcgan" "${common[@]}"
    step dcgan-wgan-gp 300 "$PY" "${G[@]}" train dcgan --data digits --steps 50 \
        --set model.loss=wgan-gp --set model.d_norm=layer --out "$runs/wgan" "${common[@]}"
    step dcgan-compile 600 "$PY" "${G[@]}" train dcgan --data digits --steps 100 --compile \
        --set train.compile_mode=reduce-overhead --out "$runs/compiled" "${common[@]}"
    step gan 300 "$PY" "${G[@]}" train gan --data digits --steps 100 --out "$runs/gan" "${common[@]}"
    step convvae 300 "$PY" "${G[@]}" train convvae --data fashion-mnist --data-dir "$DATA/fashion-mnist" \
        --steps 200 --out "$runs/convvae" "${common[@]}" --eval-every 100
    step gpt 300 "$PY" "${G[@]}" train gpt --data "text:$DATA/input.txt" --preset shakespeare-char \
        --steps 100 --set train.eval_every=50 --out "$runs/gpt" "${common[@]}"
    step sample 120 "$PY" "${G[@]}" sample "$runs/cdcgan" --label 3 --n 16 --out "$OUT/threes.png" \
        --device "$DEVICE"
    step sample-text 120 "$PY" "${G[@]}" sample "$runs/gpt" --prompt "ROMEO:" --max-new-tokens 200 \
        --device "$DEVICE"
    step eval 300 "$PY" "${G[@]}" eval "$runs/dcgan" --n 5000 --data-dir "$DATA/fashion-mnist" \
        --device "$DEVICE" --json
    step torchrun 300 "$PY" -m torch.distributed.run --nproc_per_node=1 "${G[@]}" train dcgan \
        --data digits --steps 50 --out "$runs/ddp" "${common[@]}"
    step resume 300 "$PY" "${G[@]}" train --resume "$runs/ddp" --steps 80 --device "$DEVICE"
    ;;
bench-gan | bench-rest | bench)
    install
    B=$OUT/bench.jsonl
    if [[ $1 != bench-rest ]]; then
        step throughput 250 bash -c "$PY benchmarks/train_throughput.py --device $DEVICE \
            --data-dir $DATA/fashion-mnist | tee -a $B"
        step throughput-graphs 300 bash -c "$PY benchmarks/train_throughput.py --device $DEVICE \
            --data-dir $DATA/fashion-mnist --configs dcgan64 --compile reduce-overhead | tee -a $B"
    fi
    if [[ $1 != bench-gan ]]; then
        step gpt-time-to-loss 240 bash -c "$PY benchmarks/gpt_time_to_loss.py --device $DEVICE \
            --data $DATA/input.txt | tee -a $B"
        step ddp-overhead 300 bash -c "$PY benchmarks/ddp_overhead.py --device $DEVICE | tee -a $B"
    fi
    ;;
*)
    sed -n '2,13p' "$0"
    exit 2
    ;;
esac
