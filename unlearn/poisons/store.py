"""The poison store (``poison.pt`` + ``meta.json``), under the name the poison code uses.

The format and its reader live in :mod:`unlearn.data.poison_store`, because the data modules
read stores to serve poisoned samples and the data layer imports nothing from
:mod:`unlearn.poisons`; this module only re-exports it.
"""

from unlearn.data.poison_store import (
    FORMAT,
    META_FILE,
    NORMS,
    POISON_FILE,
    REQUIRED_META,
    TOLERANCE,
    VERSION,
    PoisonStoreError,
    StoredPoison,
    StoreExistsError,
    budget_violation,
    load_poison,
    per_sample_size,
    quantize_delta,
    save_poison,
)

__all__ = [
    "FORMAT",
    "META_FILE",
    "NORMS",
    "POISON_FILE",
    "REQUIRED_META",
    "TOLERANCE",
    "VERSION",
    "PoisonStoreError",
    "StoreExistsError",
    "StoredPoison",
    "budget_violation",
    "load_poison",
    "per_sample_size",
    "quantize_delta",
    "save_poison",
]
