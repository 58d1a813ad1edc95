"""The interface every poison method implements, and what the command hands to it.

A method is one class: its ``__init__`` arguments are its settings (typed, with defaults, each
stored on ``self`` under the same name so that :meth:`PoisonMethod.params` can record them),
and :meth:`PoisonMethod.generate` turns the clean training images into a perturbation. A user
adds a method by subclassing and naming it in a config::

    method:
      class_path: my_package.MyMethod
      init_args: {eps: 0.0314}

The command (``python -m unlearn poison``) reads the data, calls ``generate`` once, checks the
budget and writes the poison store; a method never touches files except through
:class:`PoisonContext` (its resumable state).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor

from unlearn.data.base import DatasetInfo
from unlearn.errors import UnlearnError
from unlearn.io import atomic_path

Norm = Literal["linf", "l2", "l0"]
T = TypeVar("T")


@dataclass
class PoisonData:
    """The clean samples a poison is made for.

    Attributes:
        images: ``uint8 [N, C, H, W]`` clean images (CPU), in the order of ``indices``.
        labels: ``int64 [N]`` their labels.
        indices: ``int64 [N]`` their positions in the full training split.
        info: identity of the full training split.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, rows: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Images ``float [B, C, H, W]`` in ``[0, 1]`` and labels ``[B]`` of some rows."""
        rows = rows.cpu()
        images = self.images[rows].to(device=device, dtype=torch.float32).div_(255.0)
        return images, self.labels[rows].to(device)


@dataclass
class PoisonResult:
    """What a method returns.

    Attributes:
        delta: ``float [N, C, H, W]`` perturbation of every sample of :class:`PoisonData`,
            within the method's budget; poisoned = ``clamp(clean + delta, 0, 1)``.
        class_patterns: ``float [num_classes, C, H, W]`` for class-wise methods, else ``None``.
        info: plain values worth recording in ``meta.json`` (rounds run, final accuracy, ...).
    """

    delta: Tensor
    class_patterns: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class PoisonStateError(UnlearnError):
    """A resumable state file that is unreadable or belongs to a run with other settings."""


class PoisonContext:
    """What the command lends a method: device, seed, progress bars, resumable state.

    Long methods call :meth:`checkpoint` now and then with a function returning their state (a
    dict of tensors and plain values, e.g. the surrogate's ``state_dict``, the perturbation so
    far and the state of ``generator``); a rerun of the same command gets it back from
    :meth:`resume` and continues. All randomness of a method should come from ``generator``
    (and, for model initialisation, the global seed the command sets), so that the same seed
    gives the same poison, resumed or not. The command checks the file first
    (:meth:`check_state`): a state of other settings (another :attr:`state_key`) or an
    unreadable file is refused, or discarded when the run may start over.

    Args:
        device: where to compute.
        seed: the run's seed; ``generator`` starts from it.
        state_path: file of the resumable state (``None``: never saved).
        progress: show progress bars.
        checkpoint_interval: seconds between state saves (0 saves at every opportunity).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        seed: int = 0,
        state_path: str | Path | None = None,
        progress: bool = False,
        checkpoint_interval: float = 60.0,
    ) -> None:
        self.device = torch.device(device)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.state_path = Path(state_path) if state_path is not None else None
        self.progress = progress
        self.checkpoint_interval = checkpoint_interval
        self._last_save = time.monotonic()
        self.state_key: str = ""
        self._checked: dict[str, Any] | None = None  # the state check_state read

    # ------------------------------------------------------------------ resumable state
    def check_state(self, discard: bool = False) -> bool:
        """Whether a state of this run's settings is saved; deal with any other file there.

        Args:
            discard: delete a state file of other settings, or an unreadable one, instead of
                refusing it (the command's ``--overwrite``).

        Returns:
            ``True`` where :meth:`resume` will continue from the saved state.

        Raises:
            PoisonStateError: The file is unreadable (truncated, not a state file) or holds
                the state of a run with other settings, and ``discard`` is false.
        """
        self._checked = None
        if self.state_path is None or not self.state_path.is_file():
            return False
        try:
            state = self._load_state()
        except PoisonStateError:
            if not discard:
                raise
            self.state_path.unlink()
            return False
        self._checked = state
        return True

    def _load_state(self) -> dict[str, Any]:
        """The saved state of this run's settings (raises :class:`PoisonStateError`)."""
        assert self.state_path is not None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: any load failure says so
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise PoisonStateError(
                f"{self.state_path}: not a readable resumable state ({reason}); pass "
                "--overwrite to start over, or delete the file"
            ) from None
        if not isinstance(state, dict) or not {"key", "generator", "method"} <= state.keys():
            raise PoisonStateError(
                f"{self.state_path}: not a resumable poison state (expected a dict with "
                f"'key', 'generator' and 'method', found {type(state).__name__}"
                f"{' with ' + str(sorted(map(str, state))) if isinstance(state, dict) else ''}); "
                "pass --overwrite to start over, or delete the file"
            )
        if state["key"] != self.state_key:
            raise PoisonStateError(
                f"{self.state_path} holds the state of a run with other settings (method, "
                "parameters, seed, poison_ratio or data); pass --overwrite to start over, or "
                "choose another --output_dir"
            )
        return state

    def resume(self) -> dict[str, Any] | None:
        """The state saved by an interrupted run of the same command, or ``None``.

        Raises:
            PoisonStateError: As :meth:`check_state` without ``discard``.
        """
        if self.state_path is None or not self.state_path.is_file():
            return None
        state, self._checked = self._checked or self._load_state(), None
        self.generator.set_state(state["generator"])
        return state["method"]

    def checkpoint(self, make_state: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Save ``make_state()`` (and ``generator``'s state) if the interval has passed."""
        if self.state_path is None:
            return
        if not force and time.monotonic() - self._last_save < self.checkpoint_interval:
            return
        payload = {
            "key": self.state_key,
            "generator": self.generator.get_state(),
            "method": make_state(),
        }
        with atomic_path(self.state_path) as tmp:
            torch.save(payload, tmp)
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ helpers
    def track(
        self, items: Iterable[T], total: int | None = None, desc: str = "", initial: int = 0
    ) -> Iterator[T]:
        """Iterate with a progress bar when ``progress`` is set.

        Args:
            items: what to iterate over.
            total: the bar's length (all iterations, done before a resume included).
            desc: the bar's label.
            initial: iterations done before (a resumed run starts the bar there).
        """
        if not self.progress:
            yield from items
            return
        from tqdm.auto import tqdm

        yield from tqdm(
            items, total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False
        )

    def rand(self, *shape: int) -> Tensor:
        """Uniform ``[0, 1)`` numbers from ``generator`` (CPU)."""
        return torch.rand(*shape, generator=self.generator)

    def randn(self, *shape: int) -> Tensor:
        """Standard normal numbers from ``generator`` (CPU)."""
        return torch.randn(*shape, generator=self.generator)

    def randperm(self, n: int) -> Tensor:
        """A random permutation of ``range(n)`` from ``generator``."""
        return torch.randperm(n, generator=self.generator)


class PoisonMethod(ABC):
    """Base class of every poison method.

    Subclasses set ``norm`` and store each ``__init__`` argument on ``self`` under its own
    name; they implement :meth:`generate`, and :meth:`budget` if ``eps`` depends on the data.

    Args:
        eps: the budget: L_inf bound, L2 bound per image, or number of pixels (L0), for
            images in ``[0, 1]``.
    """

    #: the norm the budget is measured in: ``"linf"``, ``"l2"`` (per image) or ``"l0"``
    #: (number of pixel positions changed, any channel)
    norm: ClassVar[Norm] = "linf"

    def __init__(self, eps: float = 8 / 255) -> None:
        if eps is not None and eps <= 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        self.eps = eps

    def budget(self, image_shape: tuple[int, int, int]) -> float:
        """The budget for images of shape ``(C, H, W)`` (default: ``eps``)."""
        return float(self.eps)

    def params(self) -> dict[str, Any]:
        """The method's settings as plain values (its ``__init__`` arguments), for the meta."""
        out: dict[str, Any] = {}
        for klass in type(self).__mro__:
            if klass is object or "__init__" not in vars(klass):
                continue
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                if name == "self" or parameter.kind in (
                    parameter.VAR_POSITIONAL,
                    parameter.VAR_KEYWORD,
                ):
                    continue
                if name not in out and hasattr(self, name):
                    value = getattr(self, name)
                    out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @abstractmethod
    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Make the perturbation of every sample of ``data``.

        Args:
            data: the clean samples (and the identity of their data set).
            context: device, seed/generator, progress bars and resumable state.

        Returns:
            The perturbation ``delta [N, C, H, W]`` within ``budget(data.image_shape)``.
        """
