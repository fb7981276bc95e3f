"""What the server tests share."""

from __future__ import annotations

import pytest
import torch

from tadastream.demo import build_demo_model, demo_voice


@pytest.fixture(scope="module")
def demo():
    """(demo model, its voice) for one test module, run on one thread: the demo model is tiny, one
    thread is fastest, and test machines are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_demo_model()
    yield model, demo_voice(model)
    torch.set_num_threads(threads)
