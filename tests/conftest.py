import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def digits():
    from m2n2_jax.tasks import digits_task

    return digits_task()
