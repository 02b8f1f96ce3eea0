import os

import torch

# Before anything imports diffusers or our Triton kernels (docs/development.md): no hub; without a GPU the
# Triton kernels run under the interpreter on CPU tensors, with one they run compiled on CUDA
# tensors (tests/kernel_devices.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from pgraft.config import UNetConfig  # noqa: E402
from pgraft.models.unet import ClassConditionalUNet  # noqa: E402

TINY_UNET = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention=False, num_train_timesteps=100)


def pytest_report_header(config):
    """The machine's arithmetic first, so a failure names the CPU it happened on (pgraft/machine.py)."""
    from pgraft.machine import report_lines

    return ["pgraft machine: " + line for line in report_lines()]


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return ClassConditionalUNet.from_config(TINY_UNET, image_size=8, num_classes=3).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def digits8():
    from pgraft.tasks.digits import load_digits_split

    return load_digits_split(image_size=8)


@pytest.fixture(scope="session")
def tiny_digits_model(digits8):
    """A tiny class-conditional UNet DDPM-trained for 150 steps on the real 8×8 digits (~3 s)."""
    from pgraft.config import TrainConfig
    from pgraft.engine.train import DenoisingTrainer, TrainingData
    from pgraft.models.schedule import Schedule

    torch.manual_seed(0)
    model = ClassConditionalUNet.from_config(TINY_UNET, image_size=8, num_classes=10)
    sched = Schedule.from_scheduler_config(model.scheduler_config, 1)
    cfg = TrainConfig(lr=3e-3, batch_size=64, cond_dropout=0.1)
    DenoisingTrainer(model, sched.alphas_cumprod, cfg, null_label=10, seed=0).train(
        TrainingData(digits8.train_x, digits8.train_y), 150, progress=False
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory):
    """A task cache holding configs/tiny_train.yaml's judge and base model, for `pgraft train` runs."""
    from launch import tiny_train_task

    cache = tmp_path_factory.mktemp("train-cache")
    tiny_train_task(cache)
    return cache
