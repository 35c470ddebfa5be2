import pytest

import rh_core as rh
from rh_core.testing import TransportContract


class TestLocalTransport(TransportContract):
    @pytest.fixture
    def transport(self):
        return rh.default_host().transport("local")()
