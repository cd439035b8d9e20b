"""The engine tests' small run: the narrow variant of ``tiny_run.py`` registered for one test."""

import pytest
from tiny_run import ARGS, TINY, TINY_VARIANT

from pvt.models.variants import VARIANTS


@pytest.fixture
def tiny(monkeypatch):
    """The keyword arguments of a short ``pvt.train`` run of the narrow variant (registered for this test)."""
    monkeypatch.setitem(VARIANTS, TINY, TINY_VARIANT)
    return dict(ARGS)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory, make_stripes):
    """The few stripe images the tiny run trains on."""
    return make_stripes(tmp_path_factory.mktemp("stripes"), n_train=4, n_val=2)
