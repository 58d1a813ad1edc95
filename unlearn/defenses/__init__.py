"""Training-time defenses against unlearnable examples (select them in a ``fit`` config)."""

from unlearn.defenses.adversarial import AdversarialTraining, pgd_attack
from unlearn.defenses.base import Defense, apply_defenses
from unlearn.defenses.bdr import BitDepthReduction
from unlearn.defenses.blur import GaussianBlur
from unlearn.defenses.cutout import Cutout
from unlearn.defenses.iss import JPEG, Grayscale, grayscale, jpeg
from unlearn.defenses.mixing import CutMix, Mixup
from unlearn.defenses.ueraser import UEraser

__all__ = [
    "JPEG",
    "AdversarialTraining",
    "BitDepthReduction",
    "CutMix",
    "Cutout",
    "Defense",
    "GaussianBlur",
    "Grayscale",
    "Mixup",
    "UEraser",
    "apply_defenses",
    "grayscale",
    "jpeg",
    "pgd_attack",
]
