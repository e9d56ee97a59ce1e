"""What the family modules borrow from the shared training code, imported in one place."""

from training.train import calibrate_batchnorm, update_ema

__all__ = ["calibrate_batchnorm", "update_ema"]
