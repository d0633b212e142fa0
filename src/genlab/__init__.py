"""genlab: train, sample, evaluate and serve generative models (GANs, VAEs, GPTs).

    import genlab
    run = genlab.train("dcgan", "digits", steps=300)   # a run folder under runs/
    samples = genlab.generate(run.dir, n=16, seed=0)   # samples.save("grid.png")
    report = genlab.evaluate(run.dir)                   # FD, KID, ... and the real-vs-real floor
    model = genlab.load(run.dir)                        # the model itself: model.sample(16)

The functions are imported on first use, so `import genlab` (and `genlab --help`) stays fast.
"""

from __future__ import annotations

from typing import Any

from genlab.version import __version__

__all__ = ["GenerationRequest", "Run", "__version__", "evaluate", "generate", "load", "resume",
           "train"]


def train(*args: Any, **kwargs: Any) -> Any:
    from genlab import api

    return api.train(*args, **kwargs)


train.__doc__ = "Train a model on a dataset; see `genlab.api.train`."


def resume(*args: Any, **kwargs: Any) -> Any:
    from genlab import api

    return api.resume(*args, **kwargs)


def load(*args: Any, **kwargs: Any) -> Any:
    """The trained model of a run folder, in eval mode; see `genlab.api.load`."""
    from genlab import api

    return api.load(*args, **kwargs)


def generate(*args: Any, **kwargs: Any) -> Any:
    """Samples from a run folder or model; see `genlab.api.generate`."""
    from genlab import api

    return api.generate(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Score a run, as `genlab eval --json`; see `genlab.api.evaluate`."""
    from genlab import api

    return api.evaluate(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("Run", "GenerationRequest"):
        from genlab import api

        return getattr(api, name) if name == "Run" else api.GenerationRequest
    raise AttributeError(f"module 'genlab' has no attribute {name!r}")
