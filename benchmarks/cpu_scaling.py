"""How much throughput a second process adds on this machine: a hardware reference for DDP.

Runs a one-thread 512 x 512 float32 matmul loop for ``--seconds`` alone, then two such loops
as separate processes at once, and prints the matmuls per second of each and the ratio of
the two processes' sum to the single one. A DDP speed-up of SAL (``sal_speed.py --ddp 2``)
is read against it: two ranks cannot gain more than the machine gives two processes.

    python benchmarks/cpu_scaling.py --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def matmuls_per_second(seconds: float) -> float:
    """Matmuls per second of one thread over ``seconds`` (after 20 untimed ones)."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(20):
        a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with mp.get_context("spawn").Pool(2) as pool:
        alone = pool.apply(matmuls_per_second, (args.seconds,))
        pair = pool.map(matmuls_per_second, [args.seconds] * 2)
    print(f"one process: {alone:.1f} matmuls/s")
    print(f"two processes at once: {pair[0]:.1f} + {pair[1]:.1f} = {sum(pair):.1f} matmuls/s")
    print(f"throughput of two / one: {sum(pair) / alone:.2f}")


if __name__ == "__main__":
    main()
