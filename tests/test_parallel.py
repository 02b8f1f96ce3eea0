"""The compiled CPU loops divide their work into chunks that threads claim one at a time
(csrc/parallel.h): results must not depend on the thread count or where the chunks fall."""

import pytest
import torch

from pgraft.buffer import TrajectoryBuffer
from pgraft.kernels import _backend
from pgraft.kernels.denoise_step import denoise_step
from pgraft.kernels.select import gather_rows, group_topk
from pgraft.models.schedule import Schedule

pytestmark = pytest.mark.skipif(not _backend.HAVE_CPP, reason="the compiled extension is not built")
THREADS = (1, 2, 3, 5)


def _each_thread_count(fn):
    before = torch.get_num_threads()
    try:
        results = []
        for n in THREADS:
            torch.set_num_threads(n)
            _backend._C.reset_parallel_backoff()  # a back-off left by a busy moment would run it serially
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_step_is_bit_identical_for_every_thread_count_on_ragged_rows(dtype):
    sched = Schedule.from_scheduler_config({"num_train_timesteps": 1000, "clip_sample": False}, 10, "ddim", 1.0)
    g = torch.Generator().manual_seed(0)
    shape = (7, 3, 99, 113)  # 33,561 elements a row: two 16 Ki chunks and a ragged third
    x, o, u, z = (torch.randn(shape, generator=g).to(dtype) for _ in range(4))
    steps = torch.randint(0, 10, (7,), generator=g)

    def run():
        out = denoise_step(
            x, o, steps, sched, z, uncond_output=u, guidance_scale=3.0, return_log_prob=True, backend="cpp"
        )
        return out.prev_sample.clone(), out.pred_x0.clone(), out.log_prob.clone()

    first, *rest = _each_thread_count(run)
    for other in rest:
        for a, b in zip(first, other):
            assert torch.equal(a, b)


def test_row_gathers_and_top_k_are_identical_for_every_thread_count():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(1001, 3, 7, generator=g)  # 84-byte rows: 780 rows a chunk, ragged
    b = torch.randn(1001, 5000, generator=g).to(torch.bfloat16)  # 10 kB rows: 6 a chunk
    idx = torch.randint(0, 1001, (997,), generator=g)
    for got in _each_thread_count(lambda: gather_rows(idx, a, b, backend="cpp")):
        assert torch.equal(got[0], a[idx]) and torch.equal(got[1], b[idx])
    rewards = torch.rand(333, 17, generator=g)
    first, *rest = _each_thread_count(lambda: group_topk(rewards, 5, backend="cpp"))
    assert torch.equal(first[0], torch.sort(rewards, dim=1, descending=True, stable=True).indices[:, :5])
    for other in rest:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])


@pytest.mark.parametrize("threads", THREADS)
def test_the_buffer_gather_is_identical_for_every_thread_count(threads):
    buf = TrajectoryBuffer({"x": ((4, 33, 17), torch.bfloat16), "c": ((), torch.int64)}, capacity=3000)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2999, 4, 33, 17, generator=g).to(torch.bfloat16)
    c = torch.arange(2999)
    buf.append(group=c % 10, reward=torch.rand(2999, generator=g), round=0, x=x, c=c)
    idx = torch.randperm(2999, generator=g)[:2501]
    _backend._C.reset_parallel_backoff()
    out = buf.gather(idx, threads=threads)
    assert torch.equal(out["x"], x[idx]) and torch.equal(out["c"], c[idx])
