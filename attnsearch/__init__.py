"""attnsearch: search hybrid attention layouts by measurement."""

__version__ = "0.1.0"
