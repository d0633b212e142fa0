"""genlab: train, sample, evaluate and serve generative models (GANs, VAEs, GPTs).

    import genlab
    model = genlab.load("runs/demo")          # a trained run folder
    images = model.sample(16)                 # (16, C, H, W) in [0, 1]
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(run_dir, *, which: str = "checkpoint", device: str = "cpu"):
    """The trained model of a run folder, in eval mode, ready to `sample`.

    `which` is "checkpoint" (the latest) or "best". Hashes are verified before anything is loaded.
    """
    from genlab.runs import load_model

    return load_model(run_dir, which=which, device=device)
