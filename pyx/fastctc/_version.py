"""The single source of fastctc's version (read by setup.py/pyproject and fastctc.__version__)."""
__version__ = "0.1.0"
