"""The parity tests run in the reference environment (`make parity`, .venv-parity), which has
torchvision; `pytest tests` does not collect this folder."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
