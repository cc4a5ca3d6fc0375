"""Radiograph decode speed: raw DICOM decode + preprocessing vs. reading the decode cache, images/s.

    python bench/xray_decode.py                      # 2048 x 2048 films, 12-bit, 8 of each syntax
    python bench/xray_decode.py --side 1024 --count 4

Writes synthetic films of the given side in each transfer syntax the demo uses (uncompressed,
JPEG 2000 lossless, JPEG-LS lossless, RLE), then times, single-process: (1) what an uncached
loader does every epoch: decode, Modality LUT, VOI, letterbox to the encoder size; (2) filling
the cache once (the same work plus writing an entry); (3) what training reads afterwards: one
cached entry. A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmmed_datasets.xray.xray_cache import XrayImageCache  # noqa: E402
from mmmed_datasets.demo.xray_demo import ENCODINGS, build_dicom, draw_chest, encode_display  # noqa: E402
from mmmed_datasets.xray.xray_image import letterbox, read_radiograph  # noqa: E402


def write_films(folder: Path, side: int, count: int) -> dict[str, list[Path]]:
    """``count`` films per encoding of the demo, each ``side`` x ``side``."""
    rng = np.random.default_rng(0)
    films: dict[str, list[Path]] = {}
    for enc in ENCODINGS:
        films[enc.name] = []
        for i in range(count):
            display = draw_chest(rng, side, side, ["NORMAL", "LEFT", "RIGHT"][i % 3], "PA")
            header = {k: generate_uid() for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
            header.update(PatientName="Bench^Film", PatientID="B1", ViewPosition="PA")
            path = folder / f"{enc.name}-{i}.dcm"
            build_dicom(encode_display(display, enc), enc, header).save_as(path, enforce_file_format=True)
            films[enc.name].append(path)
    return films


def rate(seconds: float, count: int) -> str:
    return f"{count / seconds:8.1f} img/s  {1000 * seconds / count:8.1f} ms/img"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=2048, help="film side in pixels (real films: 2-3k)")
    parser.add_argument("--count", type=int, default=8, help="films per transfer syntax")
    parser.add_argument("--size", type=int, default=128, help="encoder input side (modalities.xray.net.img_size)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"Writing {args.count} films of {args.side} x {args.side} per syntax ...", flush=True)
        films = write_films(folder, args.side, args.count)
        cache = XrayImageCache(str(folder / "cache"), size=args.size, apply_voi=True,
            no_window="percentile", percentiles=[0.5, 99.5], workers=1)
        print(f"\n{'encoding':<30} {'MB/file':>8}   {'raw decode + preprocess':>32}   {'cached read':>32}   speed-up")
        total_raw = total_cached = 0.0
        for name, paths in films.items():
            megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
            start = time.perf_counter()
            for path in paths:
                letterbox(read_radiograph(path, apply_voi=True,
                    no_window="percentile", percentiles=[0.5, 99.5]).pixels, args.size)
            raw = time.perf_counter() - start
            entries = cache.warm(paths)
            start = time.perf_counter()
            for path in paths:
                cache.load(path, entries[path].entry)
            cached = time.perf_counter() - start
            total_raw, total_cached = total_raw + raw, total_cached + cached
            print(f"{name:<30} {megabytes:8.2f}   {rate(raw, len(paths)):>32}   {rate(cached, len(paths)):>32}   {raw / cached:6.0f}x")
        n = sum(len(p) for p in films.values())
        print(f"{'all':<30} {'':8}   {rate(total_raw, n):>32}   {rate(total_cached, n):>32}   {total_raw / total_cached:6.0f}x")
        start = time.perf_counter()
        cache_cold = XrayImageCache(str(folder / "cache2"), size=args.size, apply_voi=True,
            no_window="percentile", percentiles=[0.5, 99.5], workers=1)
        cache_cold.warm([p for paths in films.values() for p in paths])
        print(f"\nfilling the cache once (decode + write, 1 process): {rate(time.perf_counter() - start, n)}")
        start = time.perf_counter()
        cache_cold.warm([p for paths in films.values() for p in paths])
        print(f"warm start over a filled cache (index lookup, no hashing): {rate(time.perf_counter() - start, n)}")


if __name__ == "__main__":
    main()
