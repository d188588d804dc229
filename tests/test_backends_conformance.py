"""Both backends implement the one interface (``tfsynapse.backends.base.Backend``), with the
same signatures; journeys that must behave alike on both live in ``test_journeys_both.py``."""

import inspect

import pytest

from tfsynapse import backends
from tfsynapse.backends.base import MEMBERS, Backend


@pytest.mark.parametrize("name", backends.NAMES)
def test_each_backend_provides_every_member_of_the_interface(name):
    module = backends.get(name)
    missing = [member for member in MEMBERS if not hasattr(module, member)]
    assert missing == []
    assert isinstance(module, Backend)
    assert module.NAME == name


@pytest.mark.parametrize("name", backends.NAMES)
def test_each_backend_member_takes_the_interface_arguments(name):
    module = backends.get(name)
    for member in MEMBERS:
        declared = getattr(Backend, member, None)
        if not callable(declared):
            continue
        expected = list(inspect.signature(declared).parameters)[1:]  # without self
        actual = list(inspect.signature(getattr(module, member)).parameters)
        assert actual == expected, f"{name}.{member}{actual} differs from the interface"


def test_the_interface_check_fires_on_a_backend_missing_a_member():
    class Partial:
        NAME = "partial"
        keras = None

    assert not isinstance(Partial(), Backend)
    assert "strip" in MEMBERS and "check_model" in MEMBERS and "NAME" in MEMBERS
