#!/usr/bin/env bash
# One GPU session's measurements, as one script (a borrowed GPU is short of
# time, so everything runs in one go and each training is time-boxed):
#
#   throughput  training steps per resolution 4 -> 256 px at batch 4 and 32
#               (train_throughput.py) and the detail stage (detail_speed.py);
#   train       the paper preset grown 4 -> 256 px on a shortened schedule
#               (ITERS per resolution instead of 10,000), beside our residual
#               network with the L1 over the face (--residual --masked-loss,
#               lr 5e-4) on the same schedule, both at once on the one GPU;
#   detail      the detail stage (dce-train-detail) over the residual network,
#               or over GLOBAL when given;
#   eval        dce-eval of each model trained here at the file's 256 px on
#               the held-out identities, one at a time.
#
#   bash benchmarks/gpu_paper_256.sh PAIRS.h5 OUT [ITERS]
#
# Environment: STEPS (default "throughput train detail eval"), PYTHON (default
# python3), DEVICE (default cuda; cpu for a dry run), GLOBAL (the detail
# stage's global checkpoint; default OUT/residual/last.pt), TRAIN_S / DETAIL_S
# (seconds each training may run; at the limit it is interrupted, writes its
# checkpoint and the script goes on with it), DETAIL_ITERS (default 3000),
# DETAIL_BATCH (crops per step, default 16), DETAIL_ARGS (more dce-train-detail
# options, e.g. "--width 48 --lr 5e-4": with colour the wider stage gains per
# iteration, README "Training time"), WORKERS (data-loader processes).
# The evaluations run after the trainings, not beside them: on the GPU
# machine their CPU work slowed a concurrent detail stage's set-up fivefold.
set -uo pipefail
data=${1:?usage: gpu_paper_256.sh PAIRS.h5 OUT [ITERS]}
out=${2:?usage: gpu_paper_256.sh PAIRS.h5 OUT [ITERS]}
iters=${3:-500}
steps=" ${STEPS:-throughput train detail eval} "
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
global=${GLOBAL:-$out/residual/last.pt}
train_s=${TRAIN_S:-250}
detail_s=${DETAIL_S:-110}
detail_iters=${DETAIL_ITERS:-3000}
detail_batch=${DETAIL_BATCH:-16}
read -r -a detail_args <<< "${DETAIL_ARGS:-}"
workers=${WORKERS:-4}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
stamp() { echo "[$(date +%T)] $*"; }
wants() { [[ $steps == *" $1 "* ]]; }

stamp "torch and device"
$py -c "import torch, dce.gan; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  || { echo "torch or dce.gan is not importable with $py"; exit 2; }

if wants throughput; then
  stamp "throughput"
  for batch in 4 32; do
    $py "$here/train_throughput.py" --quick --max-resolution 256 --batch "$batch" \
      > "$out/train_throughput_batch$batch.txt" 2>&1
    cat "$out/train_throughput_batch$batch.txt"
  done
  $py "$here/detail_speed.py" --device "$device" > "$out/detail_speed.txt" 2>&1
  cat "$out/detail_speed.txt"
fi

if wants train; then
  common=(--preset paper --iters-per-resolution "$iters" --device "$device"
          --workers "$workers" --log-every 100)
  stamp "training the paper network and the residual network, $iters iterations per resolution"
  timeout -s INT -k 30 "$train_s" $py -m dce.cli.train "$data" -o "$out/paper" "${common[@]}" \
    > "$out/paper.log" 2>&1 &
  paper=$!
  timeout -s INT -k 30 "$train_s" $py -m dce.cli.train "$data" -o "$out/residual" "${common[@]}" \
    --residual --masked-loss --lr 5e-4 > "$out/residual.log" 2>&1 &
  residual=$!
  wait $residual; stamp "residual network done (exit $?)"; tail -n 2 "$out/residual.log"
  wait $paper; stamp "paper network done (exit $?)"; tail -n 2 "$out/paper.log"
fi

if wants detail; then
  stamp "detail stage over $global, $detail_iters iterations of $detail_batch crops ${detail_args[*]}"
  timeout -s INT -k 30 "$detail_s" $py -m dce.cli.train_detail "$data" "$global" \
    -o "$out/detail" --iterations "$detail_iters" --batch-size "$detail_batch" \
    --device "$device" --log-every 250 "${detail_args[@]}" > "$out/detail.log" 2>&1
  stamp "detail stage done (exit $?)"; tail -n 3 "$out/detail.log"
fi

if wants eval; then
  for name in paper residual detail; do
    [ -f "$out/$name/last.pt" ] || continue
    $py -m dce.cli.evaluate "$data" "$out/$name/last.pt" -o "$out/eval_$name" --heatmaps 4 \
      --device "$device" > "$out/eval_$name.log" 2>&1
    stamp "eval $name (exit $?)"; cat "$out/eval_$name/mae.md"
  done
fi
stamp "all done"
