"""mmmed's training step against the hand-written LLaVA-style trainer (``bench/peer_llava_style.py``), as pairs.

    python bench/compare.py                          # encoder=ecg model=nano, batch 8, 1 thread, 3 pairs of 10 steps
    python bench/compare.py --pairs 5 --threads 2 data.batch_size=16
    python bench/compare.py --compile               # mmmed's LLM forward through torch.compile (speed.compile)

Both train the same encoder and adapter (same initial weights, AdamW, learning rate) on the same batches of the
demo data, with the same frozen LLM weights, in one process at ``--threads`` intra-op threads (one by default:
two OpenMP threads on two busy cores can be 20x slower than one). After ``--warmup`` untimed steps of each, the
two run as alternating pairs (peer, mmmed, peer, mmmed, ...), ``--steps`` steps each, so that a machine that
slows down or speeds up affects both alike. Prints each pair's samples/s and ratio, tokens/s (real tokens, the
same for both), the padding each one computes on, and the median ratio. Neither side's figures include
Lightning's loop or data loading (the batches are collated beforehand): the step itself is compared.
A benchmark, not a test: run it on an otherwise idle machine, and compare figures from one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="alternating (peer, mmmed) measurements")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both")
    parser.add_argument("--compile", action="store_true", help="mmmed's LLM forward through torch.compile")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. data.batch_size=16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.config import compose_for_bench
    from bench.peer_llava_style import LlavaStyleTrainer
    from mmmed.train.build import build_run

    cfg = compose_for_bench("train", ["encoder=ecg", "model=nano", "logger=csv", f"speed.threads={args.threads}"],
                            args.overrides)
    torch.manual_seed(cfg.seed)
    run = build_run(cfg)
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    batches = []
    while len(batches) < args.warmup + args.steps:
        batches.extend(run.datamodule.train_dataloader())
    warmup, timed = batches[: args.warmup], batches[args.warmup : args.warmup + args.steps]

    model = run.module.model.train()
    lr = float(cfg.param_groups.adapter.lr)  # one learning rate for every trained part, both sides
    peer = LlavaStyleTrainer(model, lr)  # a copy, taken before mmmed's first step: the same starting weights
    model.compile_llm(args.compile)  # after the copy: the peer stays eager
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def mmmed_step(batch: dict) -> float:
        loss, _ = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["labels"], batch["signals"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    first = (peer.step(warmup[0]), mmmed_step(warmup[0]))  # the same loss from the same weights and batch
    for batch in warmup[1:]:
        peer.step(batch)
        mmmed_step(batch)

    def seconds(step) -> float:
        start = time.perf_counter()
        for batch in timed:
            step(batch)
        return time.perf_counter() - start

    pairs = [(seconds(peer.step), seconds(mmmed_step)) for _ in range(args.pairs)]

    samples = sum(len(b["ids"]) for b in timed)
    real = sum(int(b["attention_mask"].sum()) for b in timed)
    mmmed_positions = sum(b["input_ids"].numel() for b in timed)
    peer_positions = sum(LlavaStyleTrainer.padding(b)[1] for b in timed)
    print(f"setup            encoder=ecg model=nano adapter={cfg.adapter._target_.rsplit('.', 1)[1]} "
          f"batch={cfg.data.batch_size} LLM dtype={str(next(model.llm.parameters()).dtype).replace('torch.', '')} "
          f"threads={torch.get_num_threads()} steps={args.steps} per measurement, warm-up {args.warmup}"
          f"{', mmmed compiled' if args.compile else ''}")
    print(f"first-step loss  peer {first[0]:.4f}  mmmed {first[1]:.4f}  (same weights, same batch)")
    print(f"tokens/sample    {real / samples:.1f} real; padding computed on: peer {1 - real / peer_positions:.1%}, "
          f"mmmed {1 - real / mmmed_positions:.1%}")
    print(f"{'pair':<6}{'peer samples/s':>16}{'mmmed samples/s':>17}{'ratio':>8}{'peer tok/s':>12}{'mmmed tok/s':>13}")
    ratios = []
    for number, (peer_s, mmmed_s) in enumerate(pairs, start=1):
        ratios.append(peer_s / mmmed_s)
        print(f"{number:<6}{samples / peer_s:>16.2f}{samples / mmmed_s:>17.2f}{ratios[-1]:>7.2f}x"
              f"{real / peer_s:>12.1f}{real / mmmed_s:>13.1f}")
    print(f"median ratio     {statistics.median(ratios):.2f}x samples/s (mmmed / hand-written LLaVA-style peer)")


if __name__ == "__main__":
    main()
