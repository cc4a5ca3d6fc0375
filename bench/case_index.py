"""Case retrieval's vector search: usearch (what mmmed uses) against faiss-cpu, exact cosine top-k, same vectors.

    python bench/case_index.py                      # 20,000 cases x 576 dims, 200 queries, k=4, 1 thread
    python bench/case_index.py --cases 100000 --dim 576

faiss-cpu is not a dependency: install it to compare (pip install faiss-cpu); without it only usearch is timed.
Both search exactly (usearch ``exact=True``, faiss ``IndexFlatIP`` on normalised vectors), so they must return
the same neighbours; the script checks that, then times build and search as alternating pairs and prints the
median of each and every pair. A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=576, help="nano's hidden size (SmolLM2-135M)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.cases, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, args.cases, args.queries)] + 0.1 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    from usearch.index import Index

    def usearch_run() -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        index = Index(ndim=args.dim, metric="cos", dtype="f32")
        index.add(np.arange(args.cases), vectors, threads=args.threads)
        built = time.perf_counter()
        keys = index.search(queries, args.k, exact=True, threads=args.threads).keys
        return built - start, time.perf_counter() - built, np.asarray(keys)

    runners = {"usearch": usearch_run}
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)

        def faiss_run() -> tuple[float, float, np.ndarray]:
            start = time.perf_counter()
            index = faiss.IndexFlatIP(args.dim)
            index.add(vectors)
            built = time.perf_counter()
            _, keys = index.search(queries, args.k)
            return built - start, time.perf_counter() - built, keys

        runners["faiss-cpu"] = faiss_run
    except ImportError:
        print("faiss-cpu is not installed: timing usearch only (pip install faiss-cpu to compare)")

    results = {name: [run() for _ in range(1)] for name, run in runners.items()}  # warm-up, and the neighbours
    if len(runners) == 2:
        same = (np.sort(results["usearch"][0][2], axis=1) == np.sort(results["faiss-cpu"][0][2], axis=1)).mean()
        print(f"same neighbours  {same:.4f} of {args.queries} x {args.k}")
    timings = {name: [] for name in runners}
    for _ in range(args.pairs):
        for name, run in runners.items():  # alternating: usearch, faiss, usearch, faiss, ...
            build, search, _ = run()
            timings[name].append((build, search))
    print(f"setup            {args.cases} cases x {args.dim} dims, {args.queries} queries, k={args.k}, "
          f"threads={args.threads}, {args.pairs} pairs")
    for name, values in timings.items():
        builds, searches = [b for b, _ in values], [s for _, s in values]
        print(f"{name:<10} build {statistics.median(builds) * 1e3:8.1f} ms  search {statistics.median(searches) * 1e3:8.1f} ms"
              f" ({statistics.median(searches) / args.queries * 1e6:.0f} us/query)  pairs: "
              + ", ".join(f"{b * 1e3:.0f}/{s * 1e3:.0f}" for b, s in values))


if __name__ == "__main__":
    main()
