"""The package's version, in a module of its own so that any module can import it at the top
without importing the package's public API (``effdetseg/__init__.py`` imports inference, sharing, io
and models); pyproject.toml reads it from here."""
__version__ = "0.1.0"
