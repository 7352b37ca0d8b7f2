"""The package version, in its own module so that ``manifest`` records it without importing ``adtn``."""

__version__ = "0.1.0"
