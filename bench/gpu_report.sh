#!/usr/bin/env bash
# Every figure docs/multi-gpu.md still lists as missing, from one GPU, in parts that each fit within 8 minutes
# on one H200 (estimates; not yet timed there). Logs go to $OUT (or out/gpu); nothing is downloaded (random
# weights of the real shapes, the toy world).
#   bash bench/gpu_report.sh            # = tests speed: the GPU-only tests, then every speed figure     ~8 min
#   bash bench/gpu_report.sh tests      # the GPU-only tests (tests/test_gpu.py)                          ~2 min
#   bash bench/gpu_report.sh speed      # training steps, attention and MoE layers, sampling              ~6 min
#   bash bench/gpu_report.sh tests scale   # issue 25's check: the GPU tests, then 20 eager steps under torchrun
#     at configs/real.py's shapes with DDP and with FSDP2, peak memory against plumbing/memplan.py's prediction,
#     tokens/s, MFU (scale.log; each run's metrics.jsonl under $OUT/scale_*)                 ~2 + ~4 min
#   EXTRA="--device=cpu --compile=False ..." bash bench/gpu_report.sh scale   # a CPU dry run (docs/multi-gpu.md)
#   bash bench/gpu_report.sh fsdp       # issue 36's check: FSDP2 bf16 evaluated uncompiled and trained compiled with
#     recomputation (tests), the grouped GEMM at one paper MoE layer's shapes, then 10 compiled steps of an MoE at
#     real.py's shapes under FSDP2 with activation checkpointing and an evaluation (fsdp.log)             ~6 min
#   bash bench/gpu_report.sh nav        # a toy navigation model (trimmed: 3,000 steps), then planning    ~8 min
#   bash bench/gpu_report.sh sweep      # a trimmed toy IsoFLOP sweep (2 budgets x 4 sizes), dense and MoE ~8 min
#   NANOGPT=<checkout> bash bench/gpu_report.sh nanogpt   # against nanoGPT at ~300M, 4,096 positions   ~5 min
#     (a checkout of karpathy/nanoGPT, carried into an ignored folder of the repository)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
real="configs/real.py --dataset=toyworld --tokenizer=bytes --encoder_weights=random --decoder_weights=random"
extra=${EXTRA:-}               # appended to the scale part's commands: a CPU dry run shrinks the model there
run() { echo "== $*"; "$@" 2>&1 | grep -v Warning; }   # each part goes on after a failure: the rest still measures

part_tests() {
  run python -m pytest -q tests/test_gpu.py
}

part_speed() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  run python bench/bench_moe.py --device=cuda --tokens=32768 --d_model=1024 --experts=64 --granularity=4 --compile=True
  for cfg in toy toy_dense toy_moe; do run python bench/bench_train.py configs/$cfg.py --device=cuda --compile=True; done
  run python bench/bench_train.py $real --device=cuda
  run python bench/bench_train.py $real --device=cuda --ffn=moe --moe_experts=16 --moe_granularity=4
  run python bench/bench_train.py $real --device=cuda --what=attention --block_sizes=64,128,256
  run python bench/bench_sample.py configs/toy.py --device=cuda
}

part_scale() {
  # 20 optimizer steps of 2 micro-batches of 8 x 4096 tokens (real.py's rows, a smaller global batch), activation
  # checkpointing as the config has it, eager (the planner measures eager activations; two compilations would not
  # fit 8 minutes: compiled speed is the speed part's); the last step's evaluation is cut to one batch and two
  # 2-step samples. Each run's checkpoint is deleted after (8.6 GB of weights and AdamW state).
  local steps="--max_iters=20 --gradient_accumulation_steps=2 --log_interval=5 --eval_interval=20 --eval_iters=1"
  steps="$steps --eval_samples=2 --sample_steps=2 --compile=False"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  for parallel in ddp fsdp; do
    rm -rf "$out/scale_$parallel"
    run torchrun --standalone --nproc_per_node=1 train.py $real $steps --parallel=$parallel \
        --out_dir="$out/scale_$parallel" $extra
    run python -m plumbing.memplan $real $steps --parallel=$parallel --gpus=1 \
        --metrics="$out/scale_$parallel/metrics.jsonl" $extra
    rm -rf "$out/scale_$parallel"/ckpt*
  done
}

part_fsdp() {
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  run python -m pytest -q tests/test_gpu.py -k "sharded or grouped"
  # one layer of configs/paper_moe.py: d_model 2048, 256 experts of 512 (G = 16), 16 active, 4 x 4,096 tokens
  run python bench/bench_moe.py --device=cuda --tokens=16384 --d_model=2048 --experts=256 --granularity=16 \
      --steps=5 --warmup=2
  rm -rf "$out/fsdp_moe"
  run torchrun --standalone --nproc_per_node=1 train.py $real --ffn=moe --moe_experts=64 --moe_granularity=16 \
      --parallel=fsdp --compile=True --activation_checkpointing=True --batch_size=4 --gradient_accumulation_steps=1 \
      --max_iters=10 --log_interval=5 --eval_interval=10 --eval_iters=1 --eval_samples=2 --sample_steps=2 \
      --out_dir="$out/fsdp_moe"
  rm -rf "$out/fsdp_moe"/ckpt*
}

part_nanogpt() {
  local size="--n_layer=24 --d_model=1024 --n_head=16 --n_kv_head=16 --seq_len=4096 --batch_size=4 --rounds=5"
  run python bench/bench_vs_nanogpt.py --nanogpt="${NANOGPT:?set NANOGPT to a nanoGPT checkout}" --device=cuda \
      --compile=True $size --rows=text
  run python bench/bench_vs_nanogpt.py --nanogpt="$NANOGPT" --device=cuda --compile=True $size --rows=toy
}

part_nav() {
  # 3,000 steps (not the config's full run) and 10 episodes keep the part within 8 minutes
  run python train.py configs/toy_nav.py --device=cuda --compile=True --max_iters=3000 --eval_interval=3000 \
      --out_dir="$out/toy_nav"
  run python plan.py --out_dir="$out/toy_nav" --device=cuda --episodes=10
  run python plan.py --out_dir="$out/toy_nav" --device=cuda --mode=rollout --out="$out/rollout"
}

part_sweep() {
  for cfg in toy toy_moe; do
    # two budgets and four sizes around the CPU sweep's optimum (docs/scaling.md), uncompiled (compiling each small
    # run would cost more than the run): trimmed to fit 8 minutes for both configs
    run python scaling.py plan configs/$cfg.py --budgets=1e13,3e13 --depths=1,2,3,4 --aspect=32 \
        --device=cuda --loader_threads=8 --sweep_dir="$out/sweep_$cfg"
    bash "$out/sweep_$cfg/sweep.sh" > "$out/sweep_$cfg.log" 2>&1
    run python scaling.py fit --sweep_dir="$out/sweep_$cfg"
  done
}

[ $# -gt 0 ] || set -- tests speed
for part in "$@"; do
  case $part in
    tests|speed|scale|fsdp|nanogpt|nav|sweep) "part_$part" 2>&1 | tee "$out/$part.log" ;;
    *) echo "unknown part '$part': use tests, speed, scale, fsdp, nanogpt, nav or sweep" >&2; exit 2 ;;
  esac
done
