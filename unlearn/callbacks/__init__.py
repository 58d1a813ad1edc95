"""Lightning callbacks: SAL at checkpoints (:class:`SharpnessCallback`)."""

from unlearn.callbacks.sharpness import SharpnessCallback

__all__ = ["SharpnessCallback"]
