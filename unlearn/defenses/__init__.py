"""Training-time defenses against unlearnable examples (select them in a ``fit`` config)."""

from unlearn.defenses.adversarial import AdversarialTraining, pgd
from unlearn.defenses.base import Defense, LossFn, apply_defenses
from unlearn.defenses.bdr import BitDepthReduction
from unlearn.defenses.blur import GaussianBlur
from unlearn.defenses.cutout import Cutout
from unlearn.defenses.iss import JPEG, Grayscale, grayscale, jpeg
from unlearn.defenses.mixing import CutMix, Mixup
from unlearn.defenses.ueraser import UEraser, channel_shuffle, plasma_fractal

__all__ = [
    "JPEG",
    "AdversarialTraining",
    "BitDepthReduction",
    "CutMix",
    "Cutout",
    "Defense",
    "GaussianBlur",
    "Grayscale",
    "LossFn",
    "Mixup",
    "UEraser",
    "apply_defenses",
    "channel_shuffle",
    "grayscale",
    "jpeg",
    "pgd",
    "plasma_fractal",
]
