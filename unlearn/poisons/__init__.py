"""Unlearnable-example generators, the poison store and ``python -m unlearn poison``.

Importing this package registers every method for short ``class_path`` names.
"""

from unlearn.poisons.ar import AR
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult
from unlearn.poisons.em import EM
from unlearn.poisons.lsp import LSP
from unlearn.poisons.ops import OPS
from unlearn.poisons.random_noise import RandomNoise
from unlearn.poisons.rem import REM
from unlearn.poisons.store import PoisonStoreError, StoredPoison, load_poison, save_poison
from unlearn.poisons.tap import TAP

__all__ = [
    "AR",
    "EM",
    "LSP",
    "OPS",
    "REM",
    "TAP",
    "PoisonContext",
    "PoisonData",
    "PoisonMethod",
    "PoisonResult",
    "PoisonStoreError",
    "RandomNoise",
    "StoredPoison",
    "load_poison",
    "save_poison",
]
