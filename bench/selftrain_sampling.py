"""Self-training's sampling rate: mmmed's sampler against a plain per-sample ``generate`` loop, same model and questions.

    python bench/selftrain_sampling.py                       # nano LLM, threshold demo, 8 questions x K=4, 3 pairs
    python bench/selftrain_sampling.py --questions 16 --pairs 5 selftrain.temperature=1.0

* **plain**: for each question, K calls of ``MultimodalLM.generate`` (``transformers``' ``generate``) on that one
  prompt: the encoder and the whole prompt run K times, and decoding runs one row at a time.
* **mmmed**: ``mmmed.selftrain.sampler.sample_completions`` on all questions at once: each record encoded once, each
  prompt run once, its KV cache repeated for its K samples, all ``questions x K`` rows decoded together.

Both sample at the config's temperature and top-p with the same token budget and stop at the end-of-turn token;
the rate is completions per second, and generated tokens per second beside it (samples that stop early make less
work, so both are printed). Measured as alternating pairs (plain, mmmed, plain, mmmed, ...) after one warm-up of
each, in one process at ``--threads`` intra-op threads; prints every pair's ratio and the median. A benchmark, not a
test: run it on an otherwise idle machine.
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
    parser.add_argument("--questions", type=int, default=8, help="training questions sampled per measurement")
    parser.add_argument("--pairs", type=int, default=3, help="alternating (plain, mmmed) pairs timed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/selftrain.yaml, e.g. model=nano")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.config import compose_for_bench
    from mmmed.model.collate import MultimodalCollator
    from mmmed.eval.rationale import ask_for_reasoning
    from mmmed.selftrain.data import FixedSeeds
    from mmmed.selftrain.sampler import sample_completions
    from mmmed.train.build import build_run

    cfg = compose_for_bench("selftrain", ["model=nano", "logger=csv"], args.overrides)
    torch.manual_seed(cfg.seed)
    run = build_run(cfg)
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    settings = cfg.selftrain
    k, budget = settings.samples_per_question, settings.max_new_tokens
    view = FixedSeeds(run.datamodule.splits["train"], cfg.seed)
    items = [dict(view[i]) for i in range(args.questions)]
    for item in items:
        item["question"] = ask_for_reasoning(item["question"], settings.instruction)
    batch = MultimodalCollator(run.formatter, generation_inputs=True)(items)
    model = run.module.model.eval()
    tok = run.formatter.tokenizer
    common = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def new_tokens(rows: torch.Tensor) -> int:  # generated tokens, up to and including each row's end-of-turn
        return sum(min(len(r), (r == tok.eos_token_id).nonzero()[0].item() + 1 if (r == tok.eos_token_id).any() else len(r))
                   for r in rows)

    def plain() -> tuple[int, int]:
        lengths = batch["prompt_attention_mask"].sum(1)
        tokens, start = 0, 0
        for row in range(args.questions):
            ids = batch["prompt_input_ids"][row, -int(lengths[row]):].unsqueeze(0)
            count = len(items[row]["signals"]["ecg"])
            signals = {"ecg": {key: value[start:start + count] for key, value in batch["signals"]["ecg"].items()}
                       if isinstance(batch["signals"]["ecg"], dict) else batch["signals"]["ecg"][start:start + count]}
            start += count
            for _ in range(k):
                out = model.generate(ids, torch.ones_like(ids), signals, max_new_tokens=budget, do_sample=True,
                                     temperature=settings.temperature, top_p=settings.top_p, top_k=None, **common)
                tokens += new_tokens(out)
        return args.questions * k, tokens

    def ours() -> tuple[int, int]:
        out = sample_completions(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["signals"], k,
                                 budget, True, settings.temperature, settings.top_p, generator=torch.Generator().manual_seed(0),
                                 **common)
        return out.shape[0], new_tokens(out)

    def timed(method) -> tuple[float, float]:
        start = time.perf_counter()
        samples, tokens = method()
        seconds = time.perf_counter() - start
        return samples / seconds, tokens / seconds

    with torch.no_grad():
        plain(), ours()  # warm-up: first-call allocations and kernel choices
        pairs = [(timed(plain), timed(ours)) for _ in range(args.pairs)]
    print(f"setup            llm={cfg.model.llm.hub_id} questions={args.questions} K={k} "
          f"max_new_tokens={budget} temperature={settings.temperature} top_p={settings.top_p} threads={torch.get_num_threads()}")
    print(f"{'pair':<6}{'plain samples/s':>17}{'mmmed samples/s':>17}{'ratio':>8}{'plain tok/s':>13}{'mmmed tok/s':>13}")
    ratios = []
    for number, ((p_rate, p_tok), (m_rate, m_tok)) in enumerate(pairs, start=1):
        ratios.append(m_rate / p_rate)
        print(f"{number:<6}{p_rate:>17.2f}{m_rate:>17.2f}{ratios[-1]:>7.1f}x{p_tok:>13.1f}{m_tok:>13.1f}")
    print(f"median ratio     {statistics.median(ratios):.1f}x samples/s (mmmed / plain generate loop)")


if __name__ == "__main__":
    main()
