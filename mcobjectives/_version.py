"""The version of mcobjectives, kept here alone: setup.py reads it without importing the package."""

__version__ = "0.1.0"
