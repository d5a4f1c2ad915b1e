"""The package version (re-exported as `unbottle.__version__`)."""

__version__ = "0.1.0"
