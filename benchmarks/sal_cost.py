"""Cost of one SAL evaluation, counted and measured, and its agreement with the published one.

For a model and data set size N it prints, per checkpoint:

- forward/backward sample-passes of one SAL evaluation under (a) the published procedure
  (every iteration one SGD pass over the whole training set, batch 256, then a separate
  evaluation pass of each direction's model), (b) ours (probe subset, frozen part cached,
  evaluation passes saved where the probe is one batch) and (c) the first-order estimate;
- the same as training-epoch equivalents, two ways: *whole passes* (every forward or
  backward pass over a sample counts as a whole model pass; a backward counts 2 forwards, so
  an SGD step on a sample is 3 units, an evaluation 1, and a training epoch 3N) and
  *FLOP-weighted* (each pass counted by the FLOPs it really costs, measured with
  ``torch.utils.flop_counter.FlopCounterMode``: a pass over only the layers after the
  measured one, a backward that stops at the measured layer; an epoch is N training steps);
- with ``--agreement``: on trained checkpoints, the Spearman rank agreement of (b) in
  several settings (probe size, batch, steps) and of (c) with (a), the median ratio of their
  SAL values to (a)'s and the seconds each took, per checkpoint, then the minimum and median
  rho and the median seconds over checkpoints. ``--setting quickstart``: the digits small
  CNN, one training run per checkpoint (epochs ``--checkpoints``). ``--setting
  fashion_mnist``: the Fashion-MNIST protocol model of docs/fashion_mnist.md (``resnet18_w8``
  on 1,000 training images per class read from ``--root``, 30 epochs, SGD 0.05 with a cosine
  schedule, batch 32), one training run with snapshots at epochs 3, 12 and 30, and (a) on
  the whole 10,000-image subset; ``--quick`` is a smoke run (1 epoch, a 1,024-sample whole
  set);
- with ``--pair``: the seconds of (b) with the descent and ascent chains run one after the
  other and paired (``SALSettings.pair_directions``), medians over ``--repeats``, and their
  ratio (the values are the same; the check is printed).

Examples::

    python benchmarks/sal_cost.py --setting cifar --model resnet18          # counts only
    python benchmarks/sal_cost.py --setting cifar --model small_cnn --time  # + seconds of (b)
    python benchmarks/sal_cost.py --setting quickstart --agreement          # (a) vs (b), (c)
    python benchmarks/sal_cost.py --setting fashion_mnist --agreement       # ~2 h, one thread
    python benchmarks/sal_cost.py --setting quickstart --pair --batch 256   # paired chains
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unlearn.models import build_model
from unlearn.sharpness import SALSettings, compute_sal, first_order_sal, measured_layers, spearman
from unlearn.sharpness.prefix_cache import FullRunner, SuffixRunner, trace

PUBLISHED_BATCH = 256


def flops(fn) -> int:
    """FLOPs of calling ``fn()`` (matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@dataclass
class LayerFlops:
    """Per-sample FLOPs of the passes SAL makes for one layer."""

    prefix_fwd: float  # frozen part, once per probe sample
    suffix_fwd: float  # evaluation pass (suffix only)
    suffix_step: float  # SGD step: suffix forward + backward down to the weight
    full_step: float  # published SGD step: whole forward + backward down to the weight
    cached: bool


def layer_flops(model: nn.Module, gm, name: str, x: torch.Tensor, y: torch.Tensor) -> LayerFlops:
    """Per-sample FLOPs of the passes SAL makes for layer ``name`` on the batch ``x``."""
    b = len(y)
    w = model.get_submodule(name).weight.detach().clone().requires_grad_()
    full = FullRunner(model, f"{name}.weight")
    runner = SuffixRunner.build(gm, name) or full
    with torch.no_grad():
        prefix = flops(lambda: runner.prepare(x)) / b if runner.cached else 0.0
        state = runner.prepare(x)
        fwd = flops(lambda: runner(w, state)) / b

    def step(r, s) -> None:
        torch.autograd.grad(F.cross_entropy(r(w, s), y), w)

    return LayerFlops(
        prefix_fwd=prefix,
        suffix_fwd=fwd,
        suffix_step=flops(lambda: step(runner, state)) / b,
        full_step=flops(lambda: step(full, x)) / b,
        cached=runner.cached,
    )


def per_sample_flops(model: nn.Module, shape: tuple[int, int, int], classes: int) -> tuple:
    """Per-sample FLOPs: full forward, training step, and each layer's SAL passes."""
    model.eval()
    b = 2
    x = torch.rand(b, *shape)
    y = torch.randint(0, classes, (b,))
    full_fwd = flops(lambda: model(x)) / b

    def train_step() -> None:
        F.cross_entropy(model(x), y).backward()

    train = flops(train_step) / b
    model.zero_grad(set_to_none=True)
    gm = trace(model)
    layers = {name: layer_flops(model, gm, name, x, y) for name in measured_layers(model)}
    return full_fwd, train, layers


def count(n: int, probe: int, batch: int, steps: int, settings: SALSettings, per_sample: tuple):
    """Sample-pass counts and FLOPs of (a), (b), (c); returns a dict of figures."""
    full_fwd, train, layers = per_sample
    k, n_layers = settings.iters, len(layers)
    published_steps = n // PUBLISHED_BATCH * PUBLISHED_BATCH  # drop_last=True
    # (a): per layer and direction, per iteration: an SGD pass and an evaluation pass
    a_flops = sum(2 * k * published_steps * (lf.full_step + full_fwd) for lf in layers.values())
    a_passes = n_layers * 2 * k * published_steps * (3 + 1)
    single = batch >= probe
    evals = 1 if single else k
    b_flops = probe * full_fwd  # L0 and acc0, shared by all layers
    for lf in layers.values():
        b_flops += probe * lf.prefix_fwd + 2 * batch * lf.suffix_fwd  # cache + check
        b_flops += 2 * (k * steps * batch * lf.suffix_step + evals * probe * lf.suffix_fwd)
    b_passes = probe * 1 + n_layers * (probe + 2 * batch)
    b_passes += n_layers * 2 * (k * steps * batch * 3 + evals * probe)
    c_flops, c_passes = probe * train, probe * 3
    epoch_flops, epoch_passes = n * train, n * 3
    return {
        "a": (a_passes, a_passes / epoch_passes, a_flops / epoch_flops),
        "b": (b_passes, b_passes / epoch_passes, b_flops / epoch_flops),
        "c": (c_passes, c_passes / epoch_passes, c_flops / epoch_flops),
    }


def print_counts(title: str, figures: dict) -> None:
    print(f"  {title}")
    names = {"a": "(a) published", "b": "(b) ours exact", "c": "(c) first-order"}
    print(f"    {'':18} {'sample-pass units':>18} {'epochs (whole)':>15} {'epochs (FLOPs)':>15}")
    for key, (passes, whole, weighted) in figures.items():
        print(f"    {names[key]:18} {passes:18,.0f} {whole:15.2f} {weighted:15.2f}")


def train_quickstart(epochs: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The quickstart checkpoint: small CNN on the digits training split, plain SGD."""
    from unlearn.data.digits import load_digits_split

    source = load_digits_split(train=True)
    x = source.images.float() / 255.0
    y = source.labels
    torch.manual_seed(seed)
    model = build_model("small_cnn", 10, (1, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x, y


def fashion_mnist_data(root: str, per_class: int = 1000) -> tuple[torch.Tensor, ...]:
    """The protocol's training subset: ``per_class`` Fashion-MNIST training images per class.

    Class ``c``'s images are the first ``per_class`` members of ``c`` in a permutation of the
    60,000 training positions seeded 0, kept in the original order. The tool's
    ``train_subset`` option may select other images (its own seeded rule); for this
    measurement (rank agreement of probe settings on a model trained on *a* balanced subset)
    that does not matter.

    Returns:
        ``x, y, test_x, test_y``: the subset, float ``[10 * per_class, 1, 28, 28]`` in
        ``[0, 1]`` and int64 ``[10 * per_class]``, and the 10,000-image test split likewise.
    """
    from unlearn.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=root)
    source, test = dm.train_source, dm.test_source
    order = torch.randperm(len(source.labels), generator=torch.Generator().manual_seed(0))
    labels = source.labels[order]
    keep = torch.cat([order[labels == c][:per_class] for c in range(10)]).sort().values
    return (
        source.images[keep].float() / 255.0,
        source.labels[keep],
        test.images.float() / 255.0,
        test.labels,
    )


def train_fashion_mnist(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    keep: list[int],
    test: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
    augment: bool = True,
) -> dict[int, nn.Module]:
    """The protocol model: ``resnet18_w8``, SGD lr 0.05, momentum 0.9, wd 1e-4, batch 32.

    The learning rate follows a cosine schedule to 0 over ``epochs`` (stepped per epoch, as
    ``CosineAnnealingLR(T_max=epochs)`` in the tool). With ``augment`` each training image
    gets the protocol's augmentation (``FashionMNISTDataModule.train_augmentation``: a random
    crop of the 2-pixel zero-padded image and a random horizontal flip); without it the model
    memorises the 10,000 images by epoch ~20. One run, stopped after
    the last epoch in ``keep``. Prints each epoch's training loss and accuracy, and the test
    accuracy on ``test`` (``x`` float ``[M, 1, 28, 28]``, ``y`` int64 ``[M]``) at each kept epoch.

    Returns:
        ``{epoch: copy of the model (eval mode) after that many epochs}`` for each of ``keep``.
    """
    from unlearn.data import FashionMNISTDataModule

    torch.manual_seed(seed)
    augmentation = FashionMNISTDataModule(root=".").train_augmentation() if augment else None
    model = build_model("resnet18_w8", 10, (1, 28, 28))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    snapshots: dict[int, nn.Module] = {}
    for epoch in range(1, max(keep) + 1):
        model.train()
        t0 = time.perf_counter()
        total, correct = 0.0, 0
        for idx in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            inputs = x[idx]
            if augmentation is not None:
                inputs = torch.stack([augmentation(image) for image in inputs])
            out = model(inputs)
            loss = F.cross_entropy(out, y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
        schedule.step()
        print(
            f"  epoch {epoch:2}: train loss {total / len(y):.4f}, train accuracy "
            f"{correct / len(y):.4f}, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if epoch in keep:
            snapshots[epoch] = copy.deepcopy(model).eval()
            with torch.no_grad():
                hits = sum(
                    int((snapshots[epoch](tx).argmax(1) == ty).sum())
                    for tx, ty in batches_of(*test, 1000)
                )
            print(f"  snapshot after {epoch} epochs: test accuracy {hits / len(test[1]):.4f}")
    return snapshots


Checkpoint = tuple[int, nn.Module, torch.Tensor, torch.Tensor]


def quickstart_checkpoints(args: argparse.Namespace) -> Iterator[Checkpoint]:
    """``(epochs, model, x, y)``: one quickstart training run per checkpoint."""
    for epochs in args.checkpoints:
        model, x, y = train_quickstart(epochs)
        yield epochs, model, x, y


def fashion_mnist_checkpoints(args: argparse.Namespace) -> Iterator[Checkpoint]:
    """``(epochs, model, x, y)``: snapshots of one protocol training run, ``x, y`` its data."""
    if max(args.checkpoints) > args.epochs:
        raise SystemExit(f"--checkpoints {args.checkpoints} go beyond --epochs {args.epochs}")
    x, y, test_x, test_y = fashion_mnist_data(args.root)
    print(
        f"\ntraining resnet18_w8 on {len(y)} Fashion-MNIST images for {args.epochs} epochs, "
        f"augmentation {'on' if args.augment else 'off'}"
    )
    snapshots = train_fashion_mnist(
        x, y, args.epochs, args.checkpoints, (test_x, test_y), augment=args.augment
    )
    for epochs in args.checkpoints:
        yield epochs, snapshots[epochs], x, y


@dataclass(frozen=True)
class Setting:
    """A model and data set size for the counts, and the checkpoints of ``--agreement``."""

    model: str | None  # None: --model
    shape: tuple[int, int, int]
    classes: int
    n: int
    checkpoints: Callable[[argparse.Namespace], Iterator[Checkpoint]] | None = None
    default_checkpoints: tuple[int, ...] = ()
    default_grid: tuple[tuple[int, int, int | None], ...] = ()


SETTINGS = {
    "quickstart": Setting(
        "small_cnn",
        (1, 32, 32),
        10,
        1438,
        quickstart_checkpoints,
        (2, 6),
        ((1024, 1024, 1), (1024, 256, 4), (512, 512, 1), (128, 128, 1)),
    ),
    "cifar": Setting(None, (3, 32, 32), 10, 50_000),
    "fashion_mnist": Setting(
        "resnet18_w8",
        (1, 28, 28),
        10,
        10_000,
        fashion_mnist_checkpoints,
        (3, 12, 30),
        ((256, 256, 1), (256, 32, None), (512, 512, 1), (512, 64, None)),
    ),
}


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int) -> list:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def nan_min(values: list[float]) -> float:
    """Smallest value, ``nan`` if any is ``nan`` (an undefined rho must not pass unseen)."""
    return float("nan") if any(np.isnan(values)) else min(values)


def agreement(args: argparse.Namespace, checkpoints: Iterator[Checkpoint]) -> None:
    """Spearman agreement of (b) settings and (c) with (a) on trained checkpoints."""
    base = SALSettings()
    rhos: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for epochs, model, x, y in checkpoints:
        whole = min(len(y), args.whole) if args.whole else len(y)
        n = whole // PUBLISHED_BATCH * PUBLISHED_BATCH
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(y), generator=g)
        full = batches_of(x[order[:n]], y[order[:n]], PUBLISHED_BATCH)
        t0 = time.perf_counter()
        ref = compute_sal(model, full, settings=base)
        sec = time.perf_counter() - t0
        seconds.setdefault("(a) published", []).append(sec)
        a_sal = np.array([r.sal for r in ref])
        print(f"\ncheckpoint after {epochs} epoch(s); (a) on N={n}: {sec:.1f} s", flush=True)
        print(f"  (a) SAL: {np.array2string(a_sal, precision=3)}")
        for probe, batch, steps in args.grid:
            px, py = x[order[:probe]], y[order[:probe]]
            s = replace(base, steps_per_iter=steps)
            t0 = time.perf_counter()
            res = compute_sal(model, batches_of(px, py, batch), settings=s)
            sec = time.perf_counter() - t0
            b_sal = np.array([r.sal for r in res])
            ratio = np.median(b_sal / np.where(a_sal == 0, np.nan, a_sal))
            rho = spearman(a_sal, b_sal)
            label = f"(b) probe {probe:4} batch {batch:4} steps/iter {steps or 'pass':>4}"
            rhos.setdefault(label, []).append(rho)
            seconds.setdefault(label, []).append(sec)
            print(
                f"  {label}: rho {rho:+.3f}, median SAL ratio to (a) {ratio:.2f}, "
                f"{sec:6.1f} s  {np.array2string(b_sal, precision=3)}",
                flush=True,
            )
        px, py = x[order[: args.probe]], y[order[: args.probe]]
        t0 = time.perf_counter()
        fo = np.array(list(first_order_sal(model, batches_of(px, py, 256)).values()))
        sec = time.perf_counter() - t0
        ratio = np.median(fo / np.where(a_sal == 0, np.nan, a_sal))
        rho = spearman(a_sal, fo)
        label = f"(c) first-order, probe {args.probe}"
        rhos.setdefault(label, []).append(rho)
        seconds.setdefault(label, []).append(sec)
        print(f"  {label}: rho {rho:+.3f}, median SAL ratio to (a) {ratio:.2f}, {sec:.2f} s")
    print(f"\nover checkpoints {args.checkpoints}: minimum rho, median rho, median seconds")
    for label, sec in seconds.items():
        r = rhos.get(label)
        figures = f"{nan_min(r):+.3f}, {np.median(r):+.3f}, " if r else "  (reference),  "
        print(f"  {label}: {figures}{np.median(sec):.1f} s")


def pair_timing(args: argparse.Namespace, model: nn.Module, shape: tuple, classes: int) -> None:
    """Seconds of (b) with the two chains one after the other and paired, and the ratio."""
    probe = args.probe
    g = torch.Generator().manual_seed(0)
    x = torch.rand(probe, *shape, generator=g)
    y = torch.randint(0, classes, (probe,), generator=g)
    batches = batches_of(x, y, min(args.batch, probe))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    values: dict[bool, list[float]] = {}
    for _ in range(args.repeats):
        for paired in (False, True):
            s = SALSettings(
                iters=args.pair_iters, steps_per_iter=args.steps, pair_directions=paired
            )
            t0 = time.perf_counter()
            records = compute_sal(model, batches, settings=s)
            seconds[paired].append(time.perf_counter() - t0)
            values[paired] = [r.sal for r in records]
    gap = max(abs(a - b) for a, b in zip(values[False], values[True], strict=True))
    one, two = np.median(seconds[False]), np.median(seconds[True])
    print(
        f"  paired chains ({torch.get_num_threads()} threads, {args.pair_iters} iters, probe "
        f"{probe} in batches of {min(args.batch, probe)}, {args.steps} steps/iter, median of "
        f"{args.repeats}): one after the other {one:.2f} s, paired {two:.2f} s, "
        f"ratio {two / one:.2f}; largest SAL difference {gap:.2e}"
    )


def grid_entry(text: str) -> tuple[int, int, int | None]:
    """``PROBExBATCHxSTEPS`` as a tuple; STEPS ``pass`` is one pass per iteration (None)."""
    probe, batch, steps = text.split("x")
    return int(probe), int(batch), None if steps == "pass" else int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=list(SETTINGS), default="cifar")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--probe", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024, help="probe batch size (SGD batch)")
    parser.add_argument("--steps", type=int, default=2, help="SGD steps per iteration")
    parser.add_argument("--time", action="store_true", help="measure seconds of (b) and (c)")
    parser.add_argument("--agreement", action="store_true")
    parser.add_argument("--verify", action="store_true", help="check the count of (b)")
    parser.add_argument(
        "--checkpoints",
        type=int,
        nargs="+",
        help="epochs of the --agreement checkpoints (default: quickstart 2 6, fashion_mnist "
        "3 12 30)",
    )
    parser.add_argument(
        "--grid",
        type=grid_entry,
        nargs="+",
        help="(b) settings to compare, as PROBExBATCHxSTEPS (STEPS 'pass': one pass per "
        "iteration); default per setting",
    )
    parser.add_argument(
        "--root",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST files (fashion_mnist setting)",
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="fashion_mnist: epochs of the cosine schedule"
    )
    parser.add_argument(
        "--augment",
        choices=("on", "off"),
        default="on",
        help="fashion_mnist: the protocol's crop + flip augmentation while training (default on)",
    )
    parser.add_argument(
        "--whole",
        type=int,
        default=0,
        help="--agreement: use only this many samples as (a)'s whole set (0: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of --agreement: 1 epoch, checkpoint 1, a 1,024-sample whole set",
    )
    parser.add_argument("--pair", action="store_true", help="time paired descent/ascent")
    parser.add_argument("--pair-iters", type=int, default=2, help="SAL iterations for --pair")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of --pair timings")
    args = parser.parse_args()
    args.augment = args.augment == "on"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setting = SETTINGS[args.setting]
    if args.quick:
        args.epochs, args.checkpoints, args.whole = 1, [1], 1024
    args.checkpoints = args.checkpoints or list(setting.default_checkpoints)
    args.grid = args.grid or list(setting.default_grid)
    torch.manual_seed(0)
    shape, classes, n = setting.shape, setting.classes, setting.n
    args.model = setting.model or args.model
    model = build_model(args.model, classes, shape)
    probe = min(args.probe, n)
    settings = SALSettings(steps_per_iter=args.steps)
    print(f"{args.setting}: {args.model}, {len(measured_layers(model))} measured layers, N={n}")
    per_sample = per_sample_flops(model, shape, classes)
    full_fwd, train, layers = per_sample
    print(
        f"  per sample: forward {full_fwd / 1e6:.1f} MFLOP, training step {train / 1e6:.1f} MFLOP"
    )
    print(f"  layers cached: {sum(lf.cached for lf in layers.values())}/{len(layers)}")
    mean_suffix = np.mean([lf.suffix_step / train for lf in layers.values()])
    print(f"  mean suffix SGD step / training step: {mean_suffix:.2f}")
    figures = count(n, probe, min(args.batch, probe), args.steps, settings, per_sample)
    print_counts(
        f"one SAL evaluation, probe {probe}, batch {min(args.batch, probe)}, "
        f"{args.steps} steps/iter, {settings.iters} iters",
        figures,
    )
    if args.verify:
        # the formula for (b) against FlopCounterMode around a real compute_sal call
        x, y = torch.rand(8, *shape), torch.randint(0, classes, (8,))
        small = SALSettings(iters=2, steps_per_iter=args.steps)
        formula = count(8, 8, 8, args.steps, small, per_sample)["b"][2] * 8 * train
        measured = flops(lambda: compute_sal(model, [(x, y)], settings=small))
        print(f"  check: (b) FLOPs by the formula {formula:.4g}, measured {measured:.4g}")
    if args.time:
        x = torch.rand(probe, *shape)
        y = torch.randint(0, classes, (probe,))
        t0 = time.perf_counter()
        compute_sal(model, batches_of(x, y, min(args.batch, probe)), settings=settings)
        sec_b = time.perf_counter() - t0
        t0 = time.perf_counter()
        first_order_sal(model, batches_of(x, y, 256))
        sec_c = time.perf_counter() - t0
        big = torch.rand(256, *shape)
        big_y = torch.randint(0, classes, (256,))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(big), big_y).backward()
        opt.step()
        epoch_sec = (time.perf_counter() - t0) * n / 256
        model.eval()
        print(
            f"  measured ({torch.get_num_threads()} threads): (b) {sec_b:.1f} s, (c) {sec_c:.2f} s,"
        )
        print(
            f"    one training epoch ~{epoch_sec:.0f} s (one step of 256 x N/256): "
            f"(b) = {sec_b / epoch_sec:.2f} epochs"
        )
    if args.pair:
        pair_timing(args, model, shape, classes)
    if args.agreement:
        if setting.checkpoints is None:
            raise SystemExit(
                f"--agreement needs trained checkpoints; --setting {args.setting} has none"
            )
        agreement(args, setting.checkpoints(args))


if __name__ == "__main__":
    main()
