"""The suite's own markers: what `-m "not slow"` leaves out is what needs real MNIST."""

from __future__ import annotations

import pytest

from conftest import MNIST_FIXTURES


def test_every_test_that_takes_real_mnist_is_marked_slow(request: pytest.FixtureRequest) -> None:
    unmarked = [item.nodeid for item in request.session.items
                if MNIST_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    assert unmarked == []
