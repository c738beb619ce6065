"""Shared by every test: the repository's root and this folder on the path (tests share helpers.py and
local_hub.py, never each other), the local hub fixture, and the `slow` marker that splits the fast loop
(python -m pytest -q tests -m "not slow") from the integration tests (torchrun, subprocesses, training runs)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from local_hub import hub  # noqa: E402,F401  (the fixture: a local hub and shard server on 127.0.0.1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an integration test (torchrun, a subprocess, a training run); "
                                       "-m 'not slow' is the fast loop")
