"""Cost of the ImageFolder fingerprint in each mode (``content`` and ``stat``).

Writes an ImageFolder training tree of random-pixel PNGs into a temporary directory (or
``--root``), scans it once, then times ``FileImageSource.fingerprint()`` (what
``ImageFolderDataModule.info()`` adds to the scan; a fresh source each time, the result is
cached per source) ``--repeats`` times per mode, and prints the median seconds, files/s and
MB/s (MB = 10^6 bytes of image files; for ``stat`` it is the data covered, not read).

The page cache is warm after writing. ``--evict`` (the default) asks the kernel to drop the
files' cached pages before each repeat (``fsync`` once, then ``posix_fadvise(DONTNEED)``
per file, no privileges needed): the ``content`` figure then includes reading from the
device. Directory entries and inodes stay cached either way, so ``stat`` is always warm.
Rows for both cache states are printed with ``--evict both``.

Example::

    python benchmarks/fingerprint_cost.py --files 20000 --size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from unlearn.data.datasets import FINGERPRINT_MODES, FileImageSource
from unlearn.data.folder import scan_image_folder


def write_tree(directory: Path, files: int, size: int, classes: int, seed: int = 0) -> None:
    """``files`` random RGB PNGs of ``size`` px in ``directory/class_{k}/`` (round robin)."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (directory / f"class_{k:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"class_{i % classes:03d}" / f"{i:06d}.png")


def flush(paths: list[Path]) -> None:
    """Write the files' dirty pages to the device (so that they can be evicted)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(paths: list[Path]) -> None:
    """Ask the kernel to drop the files' pages from the page cache (best effort)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(source_args: tuple, mode: str, repeats: int, cold: bool) -> list[float]:
    """Seconds of ``repeats`` fingerprints of a fresh source in ``mode``."""
    paths = source_args[0]
    seconds = []
    for _ in range(repeats):
        if cold:
            evict(paths)
        source = FileImageSource(*source_args, fingerprint_mode=mode)
        started = time.perf_counter()
        source.fingerprint()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="PNG files to write")
    parser.add_argument("--size", type=int, default=32, help="side of each image, px")
    parser.add_argument("--classes", type=int, default=100, help="class folders")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    parser.add_argument(
        "--evict", choices=("yes", "no", "both"), default="yes", help="drop cached pages first"
    )
    parser.add_argument("--root", type=Path, default=None, help="write here (default: temp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        directory = Path(tmp) / "train"
        started = time.perf_counter()
        write_tree(directory, args.files, args.size, args.classes)
        written = time.perf_counter() - started
        started = time.perf_counter()
        paths, _, labels = scan_image_folder(directory)
        scanned = time.perf_counter() - started
        total = sum(p.stat().st_size for p in paths)
        flush(paths)
        print(
            f"{len(paths)} PNGs of {args.size}x{args.size} in {args.classes} classes, "
            f"{total / 1e6:.1f} MB ({total / len(paths):.0f} B each) under {tmp}; "
            f"written in {written:.1f} s, scanned in {scanned:.2f} s"
        )
        print("| mode | page cache | median s | files/s | MB/s | runs (s) |")
        print("|---|---|---|---|---|---|")
        states = {"yes": [True], "no": [False], "both": [False, True]}[args.evict]
        for mode in FINGERPRINT_MODES:
            for cold in states:
                runs = measure((paths, labels, (args.size, args.size), 3), mode, args.repeats, cold)
                median = statistics.median(runs)
                print(
                    f"| {mode} | {'evicted' if cold else 'warm'} | {median:.3f} | "
                    f"{len(paths) / median:,.0f} | {total / 1e6 / median:,.1f} | "
                    f"{', '.join(f'{s:.3f}' for s in runs)} |"
                )


if __name__ == "__main__":
    main()
