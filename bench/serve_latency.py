"""serve.py's latency and throughput at 1, 8 and 32 concurrent clients, batched against one question at a time.

    python bench/serve_latency.py --ckpt outputs/train/<demo run>         # the ECG demo's model (make demo)
    python bench/serve_latency.py --ckpt ... --clients 1 8 32 --pairs 3 --requests 64 --threads 1

Two servers over one loaded model, both on local ports in this process: ``batched`` (conf/serve.yaml's batching:
up to ``max_batch`` questions per forward pass) and ``one-at-a-time`` (``batching.max_batch=1``). Each client
thread posts the demo test fold's WFDB records (.hea + .dat, as a browser would) one after another; every request
is timed from send to answer. At each client count the two run as alternating pairs (batched, one-at-a-time, ...)
so that a machine that slows down affects both alike. Prints p50 and p95 latency and requests/s per run, and per
client count the median throughput ratio. Every answer is compared with the answer to its record asked alone: how
many are the same text, and how many name the same class (a bf16 LLM's logits depend on the batch's shape, so a
batched answer can differ in a digit from the one asked alone; README, "Asking a model"). A benchmark, not a
test: run it on an otherwise idle machine, and compare figures from one run only.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTION = "What rhythm does this ECG show?"


def demo_records(predictor, count: int) -> list[Path]:
    """The first ``count`` test-fold (10) records of the run's PTB-XL-layout data, at the rate it trained on."""
    data = predictor.run_config["data"]
    root = Path(data["root"])
    column = "filename_hr" if int(data["dataset"].get("record_rate", 100)) == 500 else "filename_lr"
    with (root / "ptbxl_database.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(float(row["strat_fold"])) == 10]
    return [root / row[column] for row in rows[:count]]


def post(client: httpx.Client, url: str, record: Path) -> tuple[float, str]:
    """Seconds from sending the record to its answer, and the answer."""
    files = [("files", (record.with_suffix(s).name, record.with_suffix(s).read_bytes())) for s in (".hea", ".dat")]
    started = time.perf_counter()
    response = client.post(f"{url}/v1/answer", files=files, data={"request": f'{{"question": "{QUESTION}"}}'})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["answer"]


def run_load(url: str, records: list[Path], clients: int, requests: int) -> tuple[list[float], float, list[str]]:
    """``requests`` posts from ``clients`` threads: (latencies, wall seconds, answers in request order)."""
    jobs = [records[k % len(records)] for k in range(requests)]
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda record: post(client, url, record), jobs))
        wall = time.perf_counter() - started
    return [latency for latency, _ in results], wall, [answer for _, answer in results]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a training run folder, .ckpt or exported model (make demo)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="requests per run (at least the client count)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating (batched, one-at-a-time) runs per count")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the model")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/serve.yaml, e.g. batching.max_batch=8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir

    from mmmed.config_dir import config_dir
    from mmmed.infer.inference import load
    from mmmed.serve.background import serving
    from serve import build_server

    predictor = load(args.ckpt)
    records = demo_records(predictor, 32)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        configs = {"batched": compose("serve", [f"ckpt={args.ckpt}", *args.overrides]),
                   "one-at-a-time": compose("serve", [f"ckpt={args.ckpt}", *args.overrides, "batching.max_batch=1"])}
    servers = {mode: build_server(cfg, predictor) for mode, cfg in configs.items()}
    print(f"model {args.ckpt}, {len(records)} demo test records, {args.threads} torch thread(s), "
          f"batched: max_batch {configs['batched'].batching.max_batch}, max_wait {configs['batched'].batching.max_wait_ms} ms")
    try:
        with serving(servers["batched"].app) as batched_url, serving(servers["one-at-a-time"].app) as single_url:
            urls = {"batched": batched_url, "one-at-a-time": single_url}
            reference = dict(zip(records, run_load(single_url, records, 1, len(records))[2]))  # also the warm-up
            run_load(batched_url, records, 8, len(records))
            print("\n| clients | mode | pair | p50 ms | p95 ms | requests/s | same answer | same class |\n"
                  "|---|---|---|---|---|---|---|---|")
            classify = predictor.classifier
            ratios: dict[int, list[float]] = {}
            for clients in args.clients:
                for pair in range(1, args.pairs + 1):
                    throughput = {}
                    for mode in ("batched", "one-at-a-time"):
                        latencies, wall, answers = run_load(urls[mode], records, clients, max(args.requests, clients))
                        alone = [reference[records[k % len(records)]] for k in range(len(answers))]
                        same = sum(a == b for a, b in zip(answers, alone))
                        same_class = sum(classify(a) == classify(b) for a, b in zip(answers, alone))
                        throughput[mode] = len(latencies) / wall
                        print(f"| {clients} | {mode} | {pair} | {1000 * percentile(latencies, 0.5):.0f} | "
                              f"{1000 * percentile(latencies, 0.95):.0f} | {throughput[mode]:.2f} | "
                              f"{same}/{len(answers)} | {same_class}/{len(answers)} |", flush=True)
                    ratios.setdefault(clients, []).append(throughput["batched"] / throughput["one-at-a-time"])
            print("\nthroughput, batched / one-at-a-time:")
            for clients, values in ratios.items():
                print(f"  {clients:>2} clients: median {statistics.median(values):.2f}x "
                      f"(pairs {', '.join(f'{v:.2f}x' for v in values)})")
            sizes = servers["batched"].service.queue.batch_sizes
            print(f"batched server's batch sizes (size: count): {dict(sorted(sizes.items()))}")
    finally:
        for server in servers.values():
            server.close()


if __name__ == "__main__":
    main()
