"""genlab's version, in a leaf module: every module may import it without importing the package's
public API (which imports the training code)."""

__version__ = "0.1.0"
