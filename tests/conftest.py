import os

# Before anything imports diffusers or triton (STACK.md): no hub, Triton kernels interpreted.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pgraft.config import UNetConfig  # noqa: E402
from pgraft.models.unet import ClassConditionalUNet  # noqa: E402

TINY_UNET = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention=False, num_train_timesteps=100)


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return ClassConditionalUNet.from_config(TINY_UNET, image_size=8, num_classes=3).eval().requires_grad_(False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
