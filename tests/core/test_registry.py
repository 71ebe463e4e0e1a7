"""`Registry`: names in the order added, one factory each, user-facing lookups as `InputError`."""

import pytest

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry


def test_registry_lookups():
    shapes = Registry("shape")
    shapes.add("square", lambda: 4, "four sides")

    @shapes.register("triangle")
    def triangle():
        return 3

    assert shapes.names() == list(shapes) == ["square", "triangle"] and len(shapes) == 2
    assert shapes["triangle"] is triangle and shapes.require("square")() == 4 and "square" in shapes
    assert shapes.summary() == "square: four sides; triangle"
    with pytest.raises(ValueError, match="already registered"):
        shapes.add("square", lambda: 0)
    with pytest.raises(KeyError, match="choose from square, triangle"):
        shapes["circle"]
    with pytest.raises(InputError, match="unknown shape 'circle'; choose from square, triangle"):
        shapes.require("circle")


def test_near_miss_names_get_a_did_you_mean():
    from lossfloor.core.registry import did_you_mean

    shapes = Registry("shape")
    shapes.add("square", lambda: 4)
    shapes.add("triangle", lambda: 3)
    with pytest.raises(InputError, match=r"unknown shape 'sqare' \(did you mean 'square'\?\); choose from"):
        shapes.require("sqare")
    with pytest.raises(KeyError, match="did you mean 'triangle'"):
        shapes["Triangle"]
    assert did_you_mean("circle", shapes) == ""
