"""Preprocessing helpers: check data before training a model on it."""

from ._inspect import InspectionReport, inspect

__all__ = ["InspectionReport", "inspect"]
