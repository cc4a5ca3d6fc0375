"""Training-step throughput of the default ECG setup at nano scale, against this machine's matmul peak.

    python bench/train_throughput.py                 # defaults: encoder=ecg model=nano
    python bench/train_throughput.py --steps 20 data.batch_size=16

Prints samples/s, tokens/s, the step's FLOPs (counted by torch's FlopCounterMode over forward and
backward), achieved FLOP/s, and its ratio to a large torch.matmul in the LLM's dtype timed in the
same process. A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square ``size`` matmul in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=16")
    args = parser.parse_args()

    from bench.config import compose_for_bench
    from mmmed.train.build import build_run

    cfg = compose_for_bench("train", ["encoder=ecg", "model=nano", "logger=csv"], args.overrides)
    torch.manual_seed(cfg.seed)
    run = build_run(cfg)
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    loader = run.datamodule.train_dataloader()
    batches = []
    while len(batches) < args.warmup + args.steps:
        batches.extend(loader)
    batches = batches[: args.warmup + args.steps]
    model = run.module.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict) -> None:
        loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[: args.warmup]:
        step(batch)
    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    flops_per_sample = counter.get_total_flops() / batches[0]["input_ids"].shape[0]

    timed = batches[args.warmup :]
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - start

    samples = sum(b["input_ids"].shape[0] for b in timed)
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    padded = sum(b["input_ids"].numel() for b in timed)
    achieved = flops_per_sample * samples / seconds
    llm_dtype = next(model.llm.parameters()).dtype
    peak = matmul_peak(llm_dtype)
    peak_fp32 = matmul_peak(torch.float32)

    print(f"setup            encoder=ecg model=nano adapter={cfg.adapter._target_.rsplit('.', 1)[1]} "
          f"batch={cfg.data.batch_size} LLM dtype={str(llm_dtype).replace('torch.', '')} threads={torch.get_num_threads()}")
    print(f"step time        {seconds / len(timed):.3f} s  ({len(timed)} steps)")
    print(f"samples/s        {samples / seconds:.2f}")
    print(f"tokens/s         {tokens / seconds:.1f}  (real tokens; {padded / seconds:.1f} incl. padding)")
    print(f"FLOPs/step       {flops_per_sample * cfg.data.batch_size / 1e9:.1f} GFLOP (forward+backward, counted)")
    print(f"achieved         {achieved / 1e9:.1f} GFLOP/s")
    print(f"matmul peak      {peak / 1e9:.1f} GFLOP/s ({str(llm_dtype).replace('torch.', '')}), {peak_fp32 / 1e9:.1f} GFLOP/s (float32)")
    print(f"ratio to peak    {achieved / peak:.1%}")
    print(f"peak RSS         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB (whole process)")


if __name__ == "__main__":
    main()
