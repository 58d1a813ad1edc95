"""JPEG through Pillow (``unlearn.defenses.jpeg``) vs torchvision's deprecated tensor codec.

On the built-in digits (1 x 32 x 32) and on uniform random 3 x 32 x 32 images, prints for
each quality the mean absolute difference between the two codecs' decoded images (in 1/255
steps) and the median milliseconds per batch of 64 of each:

    OMP_NUM_THREADS=1 python benchmarks/jpeg_codec.py --rounds 30

The torchvision path (``torchvision.transforms.v2.functional.jpeg`` on a ``uint8`` tensor)
warns that it is deprecated; the warning is silenced here, where it is measured on purpose.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from unlearn.data.digits import load_digits_split
from unlearn.defenses.base import to_float, to_uint8
from unlearn.defenses.iss import jpeg


def torchvision_jpeg(images: Tensor, quality: int) -> Tensor:
    """The former codec: torchvision's tensor JPEG on the 8-bit batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return to_float(TF.jpeg(to_uint8(images), quality), images)


def median_ms(codec: Callable[[Tensor, int], Tensor], images: Tensor, quality: int, rounds: int):
    """Median wall time of one call, in ms, after one warm-up call."""
    codec(images, quality)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        codec(images, quality)
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per codec (median)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[10, 50, 90])
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    digits = to_float(load_digits_split(train=True).images[:64], torch.zeros(()))
    torch.manual_seed(0)
    inputs = {"digits 1x32x32": digits, "random 3x32x32": torch.rand(64, 3, 32, 32)}
    print("| images | quality | mean abs diff (1/255) | max abs diff (1/255) "
          "| ms per 64, torchvision | ms per 64, Pillow |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, images in inputs.items():
        for quality in args.qualities:
            diff = (jpeg(images, quality) - torchvision_jpeg(images, quality)).abs() * 255
            old = median_ms(torchvision_jpeg, images, quality, args.rounds)
            new = median_ms(jpeg, images, quality, args.rounds)
            print(
                f"| {name} | {quality} | {diff.mean():.3f} | {diff.max():.0f} "
                f"| {old:.2f} | {new:.2f} |"
            )


if __name__ == "__main__":
    main()
