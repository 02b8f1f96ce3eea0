"""Composed inference switches from the fine-tuned to the base network at exactly N_I."""

import pytest
import torch
from torch import nn

from pgraft.config import TrainConfig
from pgraft.engine.compose import AdapterOff, Composed, Single
from pgraft.engine.rollout import rollout, run_chain
from pgraft.engine.train import make_trainable
from pgraft.models.schedule import Schedule
from pgraft.seeding import generator

CFG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False}


class Recorder(nn.Module):
    """A toy network: a fixed linear map of x, recording every timestep it is called at."""

    prediction_type = "epsilon"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.extend(t.unique().tolist())
        return self.scale * x


@pytest.mark.parametrize("n_i", [0, 1, 4, 9])
def test_switch_happens_at_exactly_n_i(n_i):
    sched = Schedule.from_scheduler_config(CFG, 10, "ddim", 1.0)
    tuned, base = Recorder(0.3), Recorder(-0.2)
    policy = Composed(tuned, base, n_i)
    out = rollout(policy, sched, torch.zeros(4, dtype=torch.long), (1, 3, 3), (0,), n_i=n_i)
    s = sched.state_timestep(n_i) if n_i else -1
    assert tuned.calls == [t for t in sched.timesteps.tolist() if t > s]
    assert base.calls == [t for t in sched.timesteps.tolist() if t <= s]
    assert len(tuned.calls) == 10 - n_i
    # x_{N_I} is the state the fine-tuned network hands over: reproduce it with the tuned net alone.
    g = generator(0, "chunk", 0)  # the rollout's one chunk draws from this stream
    x_t = torch.randn((4, 1, 3, 3), generator=g)
    _, kept = run_chain(Single(Recorder(0.3)), sched, x_t, torch.zeros(4, dtype=torch.long), g, keep=(n_i,))
    if n_i:
        torch.testing.assert_close(out.x_ni, kept[n_i])
    else:
        torch.testing.assert_close(out.x_ni, out.x0)


def test_completion_from_an_intermediate_state_runs_only_the_remaining_steps():
    sched = Schedule.from_scheduler_config(CFG, 10, "ddim", 1.0)
    net = Recorder(0.1)
    run_chain(
        Single(net),
        sched,
        torch.randn(2, 1, 3, 3),
        torch.zeros(2, dtype=torch.long),
        torch.Generator().manual_seed(0),
        start_state=4,
    )
    assert net.calls == sched.timesteps.tolist()[-4:]


def test_lora_adapter_off_is_exactly_the_base_network(tiny_unet):
    model = make_trainable(tiny_unet, TrainConfig(mode="lora", lora_rank=4))
    with torch.no_grad():  # make the adapter non-trivial (PEFT initialises B to zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([10, 60]), torch.tensor([0, 2])
    off = AdapterOff(model, "epsilon")
    with torch.no_grad():
        torch.testing.assert_close(off(x, t, c), tiny_unet(x, t, c))
        assert not torch.allclose(model(x, t, c), tiny_unet(x, t, c))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
