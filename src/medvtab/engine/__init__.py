"""Training and evaluation.

run (one run: task to run directory) -> loop (``fit``: the epochs) -> state (``TrainState``: what a checkpoint
holds), schedule (warm-up + cosine), batches (batch sizes, CUDA out of memory), evaluate (passes and the loss),
precision (autocast), acceleration (torch.compile, gradient checkpointing), distributed (Fabric); allocator (glibc
keeps freed memory: set by every command), metrics, rundir (run-directory files), tracking (TensorBoard /
MLflow), pretrain (the tiny backbones' pre-training).
"""
