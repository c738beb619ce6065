#!/usr/bin/env bash
# Every figure the README still wants from one GPU, in parts that each fit a short lease (an H100: ~30 minutes in
# all). Logs go to $OUT (or out/gpu); nothing is downloaded (random weights of the real shapes, the toy world).
#   bash tests/gpu_report.sh tests      # the GPU-only tests (tests/test_gpu.py)                       ~2 min
#   bash tests/gpu_report.sh speed      # training steps, attention and MoE layers (README "One GPU")   ~8 min
#   bash tests/gpu_report.sh nav        # a toy navigation model, then planning time and table          ~10 min
#   bash tests/gpu_report.sh sweep      # the toy IsoFLOP sweep, dense and MoE, and its fit   ~1 h: not one lease
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
real="configs/real.py --dataset=toyworld --tokenizer=bytes --encoder_weights=random --decoder_weights=random"
run() { echo "== $*"; "$@" 2>&1 | grep -v Warning; }   # each part goes on after a failure: the rest still measures

part_tests() {
  run python -m pytest -q tests/test_gpu.py
}

part_speed() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  run python tests/bench_moe.py --device=cuda --tokens=32768 --d_model=1024 --experts=64 --granularity=4 --compile=True
  for cfg in toy toy_dense toy_moe; do run python tests/bench_train.py configs/$cfg.py --device=cuda --compile=True; done
  run python tests/bench_train.py $real --device=cuda
  run python tests/bench_train.py $real --device=cuda --ffn=moe --moe_experts=16 --moe_granularity=4
  run python tests/bench_train.py $real --device=cuda --what=attention --block_sizes=64,128,256
  run python tests/bench_sample.py configs/toy.py --device=cuda
}

part_nav() {
  run python train.py configs/toy_nav.py --device=cuda --compile=True --max_iters=6000 --eval_interval=3000 \
      --out_dir="$out/toy_nav"
  run python plan.py --out_dir="$out/toy_nav" --device=cuda --episodes=20
  run python plan.py --out_dir="$out/toy_nav" --device=cuda --mode=rollout --out="$out/rollout"
}

part_sweep() {
  for cfg in toy toy_moe; do
    # sizes 4e4 to 3e6 active parameters: on the CPU the optimum was ~1.5e5 at 1e13 FLOPs (README, Scaling laws)
    run python scaling.py plan configs/$cfg.py --budgets=1e13,3e13,1e14 --depths=1,2,3,4,6 --aspect=32 \
        --device=cuda --compile=True --loader_threads=8 --sweep_dir="$out/sweep_$cfg"
    bash "$out/sweep_$cfg/sweep.sh" > "$out/sweep_$cfg.log" 2>&1
    run python scaling.py fit --sweep_dir="$out/sweep_$cfg"
  done
}

[ $# -gt 0 ] || set -- tests speed
for part in "$@"; do
  case $part in
    tests|speed|nav|sweep) "part_$part" 2>&1 | tee "$out/$part.log" ;;
    *) echo "unknown part '$part': use tests, speed, nav or sweep" >&2; exit 2 ;;
  esac
done
