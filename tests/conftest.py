import os

import jax
import pytest

# Start JAX's CPU backend now, with the device count the environment asks for
# (one unless XLA_FLAGS says otherwise), so that a CLI call made in this process
# (which may add a device-count flag for its own runs) cannot change the
# devices the rest of the session sees.
jax.devices()


@pytest.fixture(autouse=True)
def _keep_xla_flags():
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def digits():
    from m2n2_jax.tasks import digits_task

    return digits_task()
