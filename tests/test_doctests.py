"""The ``>>>`` examples of ``src/scdlkit`` run in the default test run and check an output."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import scdlkit


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(scdlkit.__path__, "scdlkit."):
        if info.name == "scdlkit.conftest":
            continue
        module = importlib.import_module(info.name)
        found.extend(test for test in finder.find(module, info.name) if test.examples)
    return found


def test_default_run_collects_the_examples_of_the_package(pytestconfig: pytest.Config) -> None:
    assert "--doctest-modules" in pytestconfig.getini("addopts")
    assert "src/scdlkit" in pytestconfig.getini("testpaths")


def test_every_example_is_run_and_checks_an_output() -> None:
    tests = _doctests()
    assert len(tests) >= 150
    skipped = [
        test.name
        for test in tests
        for example in test.examples
        if example.options.get(doctest.SKIP)
    ]
    assert not skipped, f"examples skipped with +SKIP: {skipped}"
    silent = [test.name for test in tests if not any(e.want.strip() for e in test.examples)]
    assert not silent, f"examples without an expected output: {silent}"
