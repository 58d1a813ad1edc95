"""Wall clock of one SAL evaluation against one training epoch, per SAL path and dtype.

On random data of a setting's shape (seeded; the model at its seeded initialisation) it
measures

- the seconds of one training epoch: SGD (lr 0.05, momentum 0.9, weight decay 5e-4) over the
  setting's N samples in batches of the setting's size (``--train-batch``), batch norm in
  training mode; with ``--quick`` only ``--epoch-steps`` steps are timed and scaled to the
  epoch's number of steps (the output says so). One untimed step comes first.
- the seconds of one SAL evaluation with the SAL callback's default settings (read from
  ``SharpnessCallback``'s signature: probe size, probe batch size, steps per iteration,
  iterations, radius, learning rates; ``--quick`` shrinks the probe and the iterations and
  says so), for each path of ``--paths``:

  ``sequential`` (``chain_group`` 1, one layer and one direction at a time), ``paired``
  (``pair_directions``), ``groupK`` (``chain_group`` K), ``all``, ``auto``;

  in fp32 and, with ``--bf16`` (default on CUDA), under ``torch.autocast(device,
  torch.bfloat16)`` (the epoch too). Each path and dtype has one untimed warm-up call (one
  iteration, one step, one batch); CUDA is synchronised around every timing. Medians of
  ``--repeats``.

The table gives per path and dtype: the seconds, SAL / epoch (against the epoch of the same
dtype), the ratio to ``sequential`` of the same dtype, the largest |SAL difference| and the
Spearman rho over layers against the reference (``sequential`` fp32, else the first fp32
path measured): the fp32 paths compute the same values (difference < 1e-5), bf16 shows what
autocast changes; and how many layers ran with the prefix cache.

``--budget-seconds`` (default 270 on CUDA, none on a CPU) bounds the whole run: a path
whose estimated time would overrun is skipped, and one still running when the budget ends
is stopped, each with a printed note; the table and ``--json`` are written either way.

``--ddp N``: SAL on the CPU split across N processes (gloo, one thread each) exactly as the
callback does under DDP (:func:`~unlearn.sharpness.shard.layer_costs` on the first probe
sample, :func:`~unlearn.sharpness.shard.split_layers`, ``compute_sal`` on the own layers,
:func:`~unlearn.sharpness.shard.gather_rows`), against one process (one thread) measuring
every layer, on the same model and probe: wall seconds, speed-up, each rank's seconds, the
measured imbalance (max / mean rank seconds) and the one the cost split predicts (max / mean
rank cost), and the largest difference of the gathered SAL from the one-process SAL.

Examples::

    python benchmarks/sal_speed.py --setting cifar                      # H200, < 5 min
    python benchmarks/sal_speed.py --setting quickstart --device cpu
    python benchmarks/sal_speed.py --setting fashion_mnist --device cpu --paths sequential
    OMP_NUM_THREADS=1 python benchmarks/sal_speed.py --setting quickstart --ddp 2
    python benchmarks/sal_speed.py --setting quickstart --quick         # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.callbacks.sharpness import SharpnessCallback
from unlearn.errors import ConfigError, UnlearnError
from unlearn.io import write_json_atomic
from unlearn.models import build_model
from unlearn.sharpness import LayerSAL, SALSettings, compute_sal, measured_layers, spearman
from unlearn.sharpness.shard import gather_rows, layer_costs, split_layers

Batches = list[tuple[Tensor, Tensor]]

#: ``--quick``: the probe, its batches and the iterations of a CPU smoke run.
QUICK_PROBE, QUICK_PROBE_BATCH, QUICK_ITERS, QUICK_EPOCH_STEPS = 32, 16, 2, 2

#: Default ``--budget-seconds`` on CUDA: the run must end within 5 minutes on an H200.
CUDA_BUDGET = 270.0

#: The paths measured by default, in order (``sequential`` first: it is the reference).
DEFAULT_PATHS = ("sequential", "paired", "group2", "group4", "group8", "all", "auto")

#: SALSettings fields that the callback takes as flat arguments of the same name.
SAL_FIELDS = (
    "eps",
    "iters",
    "lr_min",
    "lr_max",
    "steps_per_iter",
    "cache_prefix",
    "pair_directions",
    "chain_group",
)


@dataclass(frozen=True)
class Setting:
    """A model, its input shape, the training set size N and the training batch size."""

    model: str
    shape: tuple[int, int, int]
    classes: int
    n: int
    batch: int


SETTINGS = {
    "cifar": Setting("resnet18", (3, 32, 32), 10, 50_000, 128),
    "quickstart": Setting("small_cnn", (1, 32, 32), 10, 1_438, 64),
    "fashion_mnist": Setting("resnet18_w8", (1, 28, 28), 10, 10_000, 32),
}


# ---------------------------------------------------------------------- options
class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` and exit 2 (no usage block)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def path_settings(path: str, base: SALSettings) -> SALSettings:
    """The SAL settings of a path name: ``base`` with its grouping and pairing.

    Raises:
        ConfigError: ``path`` is none of sequential, paired, groupK (K >= 1), all, auto.
    """
    if path == "sequential":
        return replace(base, chain_group=1, pair_directions=False)
    if path == "paired":
        return replace(base, chain_group=1, pair_directions=True)
    if path in ("all", "auto"):
        return replace(base, chain_group=path, pair_directions=False)
    k = path.removeprefix("group")
    if path.startswith("group") and k.isdigit() and int(k) >= 1:
        return replace(base, chain_group=int(k), pair_directions=False)
    raise ConfigError(
        f"--paths: expected sequential, paired, groupK (K >= 1), all or auto, got {path!r}"
    )


def callback_defaults() -> dict[str, Any]:
    """The default of every argument of :class:`SharpnessCallback` (its signature)."""
    parameters = inspect.signature(SharpnessCallback.__init__).parameters
    return {
        name: p.default
        for name, p in parameters.items()
        if p.default is not inspect.Parameter.empty
    }


@dataclass(frozen=True)
class SalConfig:
    """The measurement's SAL settings and probe, from the callback's defaults.

    Attributes:
        settings: The SAL numerics (the callback's; ``--quick``: fewer iterations).
        probe_size: Probe samples (at most N).
        probe_batch: SGD batch size of the SAL steps (``None``: the whole probe).
        seed: Seed of the random data and the model.
        changed: What ``--quick`` changed from the callback's defaults, for the output.
    """

    settings: SALSettings
    probe_size: int
    probe_batch: int | None
    seed: int
    changed: tuple[str, ...] = ()


def sal_config(quick: bool, n: int) -> SalConfig:
    """The callback's default SAL settings and probe; ``quick`` shrinks probe and iterations."""
    defaults = callback_defaults()
    settings = SALSettings(**{k: defaults[k] for k in SAL_FIELDS})
    size, batch = defaults["probe_size"], defaults["probe_batch_size"]
    changed: tuple[str, ...] = ()
    if quick:
        changed = (
            f"probe_size {size} -> {QUICK_PROBE}",
            f"probe_batch_size {batch} -> {QUICK_PROBE_BATCH}",
            f"iters {settings.iters} -> {QUICK_ITERS}",
        )
        size, batch = QUICK_PROBE, QUICK_PROBE_BATCH
        settings = replace(settings, iters=QUICK_ITERS)
    return SalConfig(settings, min(size, n), batch, defaults["seed"], changed)


# ---------------------------------------------------------------------- data and model
def random_data(n: int, setting: Setting, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` random images ``float [n, C, H, W]`` in [0, 1] and labels ``int64 [n]`` (CPU)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *setting.shape, generator=g)
    y = torch.randint(0, setting.classes, (n,), generator=g)
    return x, y


def make_model(setting: Setting, seed: int) -> nn.Module:
    """The setting's model at its initialisation by ``seed`` (the same in every process)."""
    torch.manual_seed(seed)
    return build_model(setting.model, setting.classes, setting.shape)


def probe_batches(x: Tensor, y: Tensor, size: int | None, device: torch.device) -> Batches:
    """The probe ``x [P, ...]``, ``y [P]`` cut into batches of ``size`` (``None``: one)."""
    size = size or len(y)
    return [
        (x[i : i + size].to(device), y[i : i + size].to(device)) for i in range(0, len(y), size)
    ]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    """``torch.autocast`` to bfloat16 for ``"bf16"``; no context for ``"fp32"``."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------------- budget
class BudgetExceeded(Exception):
    """The run's ``--budget-seconds`` ended during a measurement."""


class Budget:
    """Seconds left of ``--budget-seconds`` (``seconds <= 0``: no limit), since its creation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def left(self) -> float:
        """Seconds left (``inf`` without a limit)."""
        if self.seconds <= 0:
            return math.inf
        return self.seconds - (time.perf_counter() - self.start)

    @contextmanager
    def limit(self) -> Iterator[None]:
        """Raise :class:`BudgetExceeded` inside the block when the budget runs out.

        A ``SIGALRM`` timer; ``compute_sal`` restores the model and the random streams on
        the way out (``model_untouched``), so the next measurement is unaffected.
        """
        left = self.left()
        if math.isinf(left):
            yield
            return
        if left <= 0:
            raise BudgetExceeded

        def expired(signum: int, frame: Any) -> NoReturn:
            raise BudgetExceeded

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- measurements
@dataclass
class Epoch:
    """Seconds of one training epoch in one dtype."""

    dtype: str
    seconds: float  # of the whole epoch (scaled from ``timed_steps`` where fewer)
    timed_steps: int
    epoch_steps: int
    measured: list[float] = field(default_factory=list)  # seconds of each repeat


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    order: Sequence[Tensor],
    device: torch.device,
    dtype: str,
) -> None:
    """One SGD step per index batch of ``order`` on ``x [N, ...]``, ``y [N]`` (on ``device``)."""
    for idx in order:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()


def epoch_seconds(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    setting: Setting,
    batch: int,
    steps: int | None,
    device: torch.device,
    dtype: str,
    repeats: int,
) -> Epoch:
    """Seconds of one epoch over N samples in batches of ``batch`` (median of ``repeats``).

    Trains a copy of ``model`` (the original is not touched) on ``data`` (``x [M, ...]``,
    ``y [M]``, on ``device``; ``M = N`` for a whole epoch). ``steps``: time only that many
    steps and scale to the ``ceil(N / batch)`` steps of an epoch.
    """
    x, y = data
    epoch_steps = math.ceil(setting.n / batch)
    timed = epoch_steps if steps is None else min(steps, epoch_steps)
    trained = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    train_steps(trained, opt, x, y, [torch.arange(batch, device=device)], device, dtype)  # warm-up
    measured = []
    for _ in range(repeats):
        order = torch.randperm(len(y), generator=g).split(batch)[:timed]
        order = [idx.to(device) for idx in order]
        sync(device)
        t0 = time.perf_counter()
        train_steps(trained, opt, x, y, order, device, dtype)
        sync(device)
        measured.append((time.perf_counter() - t0) * epoch_steps / timed)
    return Epoch(dtype, statistics.median(measured), timed, epoch_steps, measured)


def timed_sal(
    model: nn.Module,
    batches: Batches,
    settings: SALSettings,
    device: torch.device,
    dtype: str,
    layers: Sequence[str] | None = None,
) -> tuple[float, list[LayerSAL]]:
    """Seconds and records of one ``compute_sal`` call (under bf16 autocast for ``"bf16"``)."""
    sync(device)
    t0 = time.perf_counter()
    with autocast(device, dtype):
        records = compute_sal(model, batches, layers, settings=settings)
    sync(device)
    return time.perf_counter() - t0, records


def warm_up(
    model: nn.Module,
    batches: Batches,
    settings: SALSettings,
    device: torch.device,
    dtype: str,
    layers: Sequence[str] | None = None,
) -> None:
    """One untimed small call of the path: one iteration of one step on the first batch."""
    timed_sal(
        model, batches[:1], replace(settings, iters=1, steps_per_iter=1), device, dtype, layers
    )


@dataclass
class Row:
    """One path and dtype: its seconds and its values' agreement with the reference."""

    path: str
    dtype: str
    seconds: float | None = None
    measured: list[float] = field(default_factory=list)
    sal: list[float] = field(default_factory=list)
    cached: int = 0
    per_epoch: float | None = None
    to_sequential: float | None = None
    max_diff: float | None = None
    rho: float | None = None
    note: str = ""


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is running out of device memory."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)


def first_line(err: BaseException, limit: int = 120) -> str:
    """The first line of an error's message (at most ``limit`` characters)."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def estimate(rows: Sequence[Row], path: str, repeats: int) -> float:
    """Seconds a path's measurement is expected to take, for the budget (0: no idea yet).

    The same path's other dtype where measured, else the fastest measurement so far (an
    optimistic guess: a path is skipped only when even that would not fit).
    """
    same = [r.seconds for r in rows if r.path == path and r.seconds is not None]
    done = [r.seconds for r in rows if r.seconds is not None]
    guess = same[0] if same else min(done, default=0.0)
    return guess * (repeats + 1)  # + the warm-up, counted generously as a whole call


def measure_path(
    model: nn.Module,
    batches: Batches,
    row: Row,
    settings: SALSettings,
    device: torch.device,
    repeats: int,
) -> None:
    """Fill ``row`` with the median seconds, the SAL values and the cached-layer count."""
    warm_up(model, batches, settings, device, row.dtype)
    for _ in range(repeats):
        seconds, records = timed_sal(model, batches, settings, device, row.dtype)
        row.measured.append(seconds)
    row.seconds = statistics.median(row.measured)
    row.sal = [r.sal for r in records]
    row.cached = sum(r.cached for r in records)


def compare(rows: list[Row], epochs: dict[str, Epoch]) -> Row | None:
    """Fill the ratios and the agreement with the reference; return the reference row."""
    done = [r for r in rows if r.seconds is not None]
    reference = next((r for r in done if r.path == "sequential" and r.dtype == "fp32"), None)
    reference = reference or next((r for r in done if r.dtype == "fp32"), None)
    for row in done:
        epoch = epochs.get(row.dtype)
        row.per_epoch = row.seconds / epoch.seconds if epoch else None
        seq = next((r for r in done if r.path == "sequential" and r.dtype == row.dtype), None)
        row.to_sequential = row.seconds / seq.seconds if seq else None
        if reference is not None:
            ours, ref = np.asarray(row.sal), np.asarray(reference.sal)
            row.max_diff = float(np.max(np.abs(ours - ref)))
            row.rho = spearman(ref, ours)
    return reference


def measure_paths(
    model: nn.Module,
    batches: Batches,
    paths: Sequence[str],
    dtypes: Sequence[str],
    base: SALSettings,
    device: torch.device,
    args: argparse.Namespace,
    budget: Budget,
) -> list[Row]:
    """One row per path and dtype (each path's dtypes one after the other)."""
    rows: list[Row] = []
    stopped = False
    for path in paths:
        settings = path_settings(path, base)
        for dtype in dtypes:
            row = Row(path, dtype)
            rows.append(row)
            if stopped:
                row.note = "skipped: budget spent"
                continue
            needed = estimate(rows, path, args.repeats)
            if needed > budget.left():
                row.note = f"skipped: ~{needed:.1f} s expected, {budget.left():.1f} s left"
                print(f"  {path} {dtype}: {row.note}", flush=True)
                continue
            try:
                with budget.limit():
                    measure_path(model, batches, row, settings, device, args.repeats)
            except BudgetExceeded:
                row.note = f"stopped: --budget-seconds {budget.seconds:g} ran out"
                row.measured, row.seconds = [], None
                stopped = True
            except RuntimeError as err:  # out of memory, or a kernel refusing the size
                # noted, not raised: a budgeted GPU run must still print the other paths
                row.note = "out of device memory" if is_oom(err) else f"failed: {first_line(err)}"
                row.measured, row.seconds = [], None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            state = f"{row.seconds:.2f} s" if row.seconds is not None else row.note
            print(f"  {path} {dtype}: {state}", flush=True)
    return rows


# ---------------------------------------------------------------------- output
def header(device: torch.device) -> dict[str, Any]:
    """The run's command, date, machine, torch version and threads (printed and in JSON)."""
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    return {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def fmt(value: float | None, spec: str) -> str:
    """``value`` in ``spec`` (e.g. ``"9.2f"``), or ``-`` right-aligned to its width."""
    if value is None or math.isnan(value):
        width = spec.lstrip("+-").split(".")[0]
        return "-".rjust(int(width or 1))
    return format(value, spec)


def print_table(rows: Sequence[Row], reference: Row | None, n_layers: int) -> None:
    """The figures of every path and dtype."""
    ref = f"{reference.path} {reference.dtype}" if reference else "none"
    print(f"\none SAL evaluation per path ({n_layers} layers); reference for diff and rho: {ref}")
    print("  (SAL/epoch: against the training epoch of the same dtype; cached: layers that ran")
    print("  with the prefix cache; a grouped layer never does)")
    print(
        f"  {'path':12} {'dtype':5} {'seconds':>9} {'SAL/epoch':>10} {'/sequential':>12} "
        f"{'max|diff|':>10} {'rho':>7} {'cached':>7}  note"
    )
    for r in rows:
        cached = f"{r.cached}/{n_layers}" if r.seconds is not None else "-"
        print(
            f"  {r.path:12} {r.dtype:5} {fmt(r.seconds, '9.2f')} {fmt(r.per_epoch, '10.3f')} "
            f"{fmt(r.to_sequential, '12.3f')} {fmt(r.max_diff, '10.1e')} {fmt(r.rho, '+7.3f')} "
            f"{cached:>7}  {r.note}"
        )
    bad = [r for r in rows if r.dtype == "fp32" and r.max_diff is not None and r.max_diff >= 1e-5]
    if bad:
        print(
            f"  WARNING: fp32 paths differ from the reference by >= 1e-5: {[r.path for r in bad]}"
        )
    if reference is not None:
        print(f"  largest |SAL| of the reference: {max(abs(v) for v in reference.sal):.3e}")


# ---------------------------------------------------------------------- DDP
@dataclass(frozen=True)
class DdpJob:
    """What every DDP process measures (all rebuild the same model and probe from seeds)."""

    setting: str
    config: SalConfig
    repeats: int
    port: int


def ddp_inputs(job: DdpJob) -> tuple[nn.Module, Batches, list[str]]:
    """The model, the probe batches (CPU) and the measured layers of ``job``."""
    setting = SETTINGS[job.setting]
    model = make_model(setting, job.config.seed)
    x, y = random_data(job.config.probe_size, setting, job.config.seed)
    batches = probe_batches(x, y, job.config.probe_batch, torch.device("cpu"))
    return model, batches, measured_layers(model)


def ddp_worker(rank: int, world: int, job: DdpJob, queue: Any) -> None:
    """One DDP process: its share of the layers, as the callback splits them, ``repeats`` times.

    Rank 0 puts on ``queue``: per repeat, each rank's ``(compute_sal seconds, seconds from
    the barrier to the gathered rows)`` and the gathered SAL values, plus the split.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, batches, layers = ddp_inputs(job)
        units = [(None, layer) for layer in layers]
        # as SalMonitor._my_units: costs on the first probe sample, the same split everywhere
        costs = layer_costs(model, batches[0][0][:1], layers)
        shards = split_layers(units, costs, world)
        mine = [layer for _, layer in shards[rank]]
        settings = job.config.settings
        if mine:
            warm_up(model, batches, settings, torch.device("cpu"), "fp32", mine)
        repeats = []
        for _ in range(job.repeats):
            dist.barrier()
            t0 = time.perf_counter()
            records = compute_sal(model, batches, mine, settings=settings) if mine else []
            own = time.perf_counter() - t0
            rows = gather_rows([{"layer": r.layer, "sal": r.sal} for r in records], units, world)
            wall = time.perf_counter() - t0
            times: list[Any] = [None] * world
            dist.all_gather_object(times, (own, wall))
            repeats.append({"times": times, "sal": [row["sal"] for row in rows]})
        if rank == 0:
            queue.put({"repeats": repeats, "shards": shards, "costs": costs, "layers": layers})
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predicted_imbalance(shards: Sequence[Sequence[Any]], costs: dict[Any, float]) -> float:
    """Max / mean of the ranks' summed costs (1: a perfect split)."""
    loads = [sum(costs[u] for u in shard) for shard in shards]
    return max(loads) / statistics.mean(loads)


def run_ddp(args: argparse.Namespace, config: SalConfig) -> dict[str, Any]:
    """One process (one thread) against ``args.ddp`` gloo processes (one thread each)."""
    world = args.ddp
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned processes start with one thread too
    job = DdpJob(args.setting, config, args.repeats, free_port())
    model, batches, layers = ddp_inputs(job)
    cpu = torch.device("cpu")
    print(f"\nDDP on the CPU: 1 process vs {world} (gloo, 1 thread each), {len(layers)} layers")
    warm_up(model, batches, config.settings, cpu, "fp32")
    single, values = [], []
    for _ in range(args.repeats):
        seconds, records = timed_sal(model, batches, config.settings, cpu, "fp32")
        single.append(seconds)
        values = [r.sal for r in records]
    one = statistics.median(single)
    print(f"  1 process: {one:.2f} s (median of {args.repeats})", flush=True)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    t0 = time.perf_counter()
    mp.spawn(ddp_worker, args=(world, job, queue), nprocs=world, join=True)
    spawned = time.perf_counter() - t0
    result = queue.get()
    times = [rep["times"] for rep in result["repeats"]]
    walls = [max(wall for _, wall in t) for t in times]
    rank_seconds = [statistics.median(t[r][0] for t in times) for r in range(world)]
    measured = statistics.median(
        max(own for own, _ in t) / statistics.mean(own for own, _ in t) for t in times
    )
    wall = statistics.median(walls)
    costs = dict(zip([(None, layer) for layer in result["layers"]], result["costs"], strict=True))
    predicted = predicted_imbalance(result["shards"], costs)
    diff = max(
        float(np.max(np.abs(np.asarray(rep["sal"]) - np.asarray(values))))
        for rep in result["repeats"]
    )
    print(
        f"  {world} processes: {wall:.2f} s wall (median of {args.repeats}); "
        f"speed-up {one / wall:.2f}"
    )
    print("  (issue 15's target: >= 1.6 at 2 ranks)")
    for r, (shard, sec) in enumerate(zip(result["shards"], rank_seconds, strict=True)):
        share = sum(costs[u] for u in shard) / sum(costs.values())
        print(f"    rank {r}: {sec:.2f} s, {len(shard)} layers, {share:.1%} of the cost")
    print(
        f"  imbalance (max / mean rank seconds): measured {measured:.3f}, predicted by the "
        f"cost split {predicted:.3f}"
    )
    print(f"  gathered SAL vs 1 process: largest |difference| {diff:.1e}")
    print(f"  (spawning, init and the cost split took {spawned - sum(walls):.1f} s, not counted)")
    return {
        "world_size": world,
        "one_process_seconds": single,
        "wall_seconds": walls,
        "speed_up": one / wall,
        "rank_seconds": rank_seconds,
        "shards": [[layer for _, layer in shard] for shard in result["shards"]],
        "measured_imbalance": measured,
        "predicted_imbalance": predicted,
        "max_diff": diff,
    }


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, checked (bad ones stop the run with one line, exit 2)."""
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=list(SETTINGS), default="cifar")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=list(DEFAULT_PATHS),
        help="SAL paths: sequential, paired, groupK, all, auto (default: "
        f"{' '.join(DEFAULT_PATHS)})",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="also measure under bf16 autocast (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timings per figure (median)")
    parser.add_argument(
        "--train-batch", type=int, help="training batch size (default: the setting's)"
    )
    parser.add_argument(
        "--epoch-steps",
        type=int,
        help=f"time this many training steps and scale to the epoch (--quick: {QUICK_EPOCH_STEPS})",
    )
    parser.add_argument("--quick", action="store_true", help="CPU-sized smoke run")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        help=f"stop measuring after this many seconds, 0 none (default: {CUDA_BUDGET:g} on cuda)",
    )
    parser.add_argument("--ddp", type=int, default=0, help="N: SAL split across N CPU processes")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: OMP_NUM_THREADS or torch's)"
    )
    parser.add_argument("--json", help="write the figures to this file (atomically)")
    args = parser.parse_args(argv)
    try:
        check(args)
    except ConfigError as err:
        parser.error(str(err))
    return args


def check(args: argparse.Namespace) -> None:
    """Refuse options that cannot work here (:class:`ConfigError`, one line)."""
    for name in ("repeats", "train_batch", "epoch_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.ddp < 0 or args.ddp == 1:
        raise ConfigError(f"--ddp must be >= 2 processes (0: no DDP), got {args.ddp}")
    if args.ddp and args.device == "cuda":
        raise ConfigError("--ddp runs CPU processes (gloo); --device cuda cannot go with it")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.ddp else "cpu"
    if args.bf16 is None:
        args.bf16 = args.device == "cuda"
    if args.budget_seconds is None:
        args.budget_seconds = CUDA_BUDGET if args.device == "cuda" else 0.0
    base = SALSettings()
    for path in args.paths:
        path_settings(path, base)
    if len(set(args.paths)) != len(args.paths):
        raise ConfigError(f"--paths: each path once, got {args.paths}")


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print; see the module docstring."""
    args = parse_args(argv)
    budget = Budget(args.budget_seconds)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    setting = SETTINGS[args.setting]
    config = sal_config(args.quick, setting.n)
    info = header(device)
    for key, value in info.items():
        print(f"{key}: {value}")
    s = config.settings
    print(
        f"{args.setting}: {setting.model}, input {setting.shape}, N={setting.n:,}; SAL settings "
        f"(SharpnessCallback defaults): probe {config.probe_size} in batches of "
        f"{config.probe_batch or config.probe_size}, {s.iters} iters, steps/iter "
        f"{s.steps_per_iter or 'one pass'}, eps {s.eps}, lr {s.lr_min}/{s.lr_max}"
    )
    if config.changed:
        print(f"  --quick changed: {', '.join(config.changed)}")
    figures: dict[str, Any] = {"header": info, "setting": args.setting, "sal": asdict(config)}
    if args.ddp:
        figures["ddp"] = run_ddp(args, config)
    else:
        figures.update(run_paths(args, setting, config, device, budget))
    if args.json:
        write_json_atomic(args.json, figures)
        print(f"\nfigures written to {args.json}")


def run_paths(
    args: argparse.Namespace,
    setting: Setting,
    config: SalConfig,
    device: torch.device,
    budget: Budget,
) -> dict[str, Any]:
    """The epoch and every path's SAL evaluation; prints the table, returns the figures."""
    batch = args.train_batch or setting.batch
    steps = args.epoch_steps or (QUICK_EPOCH_STEPS if args.quick else None)
    dtypes = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    model = make_model(setting, config.seed).to(device)
    n_data = setting.n if steps is None else max(config.probe_size, batch * (steps + 1))
    x, y = random_data(min(n_data, setting.n), setting, config.seed)
    batches = probe_batches(
        x[: config.probe_size], y[: config.probe_size], config.probe_batch, device
    )
    data = (x.to(device), y.to(device))
    epochs: dict[str, Epoch] = {}
    for dtype in dtypes:
        try:
            with budget.limit():
                epochs[dtype] = epoch_seconds(
                    model, data, setting, batch, steps, device, dtype, args.repeats
                )
        except BudgetExceeded:
            print(f"  training epoch {dtype}: stopped, --budget-seconds {budget.seconds:g} ran out")
            continue
        e = epochs[dtype]
        how = (
            "a whole epoch"
            if e.timed_steps == e.epoch_steps
            else f"{e.timed_steps} steps timed, scaled to the epoch's {e.epoch_steps}"
        )
        print(
            f"training epoch {dtype}: {e.seconds:.2f} s (SGD, batch {batch}, {e.epoch_steps} "
            f"steps; {how})",
            flush=True,
        )
    del data
    print("SAL evaluations (after one untimed warm-up call each):", flush=True)
    rows = measure_paths(model, batches, args.paths, dtypes, config.settings, device, args, budget)
    reference = compare(rows, epochs)
    print_table(rows, reference, len(measured_layers(model)))
    return {
        "train_batch": batch,
        "epochs": {k: asdict(v) for k, v in epochs.items()},
        "paths": [asdict(r) for r in rows],
        "reference": None if reference is None else f"{reference.path} {reference.dtype}",
    }


def run(entry: Callable[[], None]) -> None:
    """Run ``entry``; a bad input (:class:`UnlearnError`) is one line on stderr, exit 2."""
    try:
        entry()
    except UnlearnError as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run(main)
