"""The C++ trajectory buffer against a small pure-Python model, plus every corrupt-file case."""

import math
import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pgraft.buffer import TrajectoryBuffer
from pgraft.errors import BufferError, CheckpointError

FIELDS = {"x": ((2, 3), torch.bfloat16), "y": ((4,), torch.float32), "c": ((), torch.int64)}
CAP = 12


class Model:
    """Rows as plain tuples: (group, reward, round, rank, x, y, c); the semantics the buffer must have."""

    def __init__(self, policy):
        self.rows, self.policy = [], policy

    def append(self, rows):
        if len(rows) > CAP:
            raise BufferError
        while len(self.rows) + len(rows) > CAP:
            if self.policy == "refuse":
                raise BufferError
            oldest = min(r[2] for r in self.rows)
            self.rows = [r for r in self.rows if r[2] != oldest]
        self.rows += rows

    def top_k(self, k):
        ranked = sorted(
            (i for i, r in enumerate(self.rows) if math.isfinite(r[1])),
            key=lambda i: (self.rows[i][0], -self.rows[i][1], i),
        )
        keep, seen = set(), {}
        for i in ranked:
            g = self.rows[i][0]
            if seen.get(g, 0) < k:
                keep.add(i)
                seen[g] = seen.get(g, 0) + 1
        self.rows = [r for i, r in enumerate(self.rows) if i in keep]

    def threshold(self, tau):
        self.rows = [r for r in self.rows if math.isfinite(r[1]) and r[1] >= tau]


def _rows_of(buf):
    m = buf.meta()
    x, y, c = buf.field("x"), buf.field("y"), buf.field("c")
    return [
        (int(m["group"][i]), float(m["reward"][i]), int(m["round"][i]), int(m["rank"][i]),
         x[i].float().tolist(), y[i].tolist(), int(c[i]))
        for i in range(len(buf))
    ]  # fmt: skip


def _same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra[0] == rb[0] and ra[2:] == rb[2:]
        assert (math.isnan(ra[1]) and math.isnan(rb[1])) or ra[1] == rb[1]


rewards = st.one_of(st.floats(-2, 2, width=32), st.just(float("nan")), st.just(float("inf")))


@settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class BufferMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.policy = "evict_oldest_round"
        self.buf = TrajectoryBuffer(FIELDS, CAP, self.policy)
        self.model = Model(self.policy)
        self.round = 0
        self.counter = 0

    @rule(n=st.integers(0, 14), groups=st.lists(st.integers(0, 3), min_size=14, max_size=14),
          rs=st.lists(rewards, min_size=14, max_size=14), rank=st.integers(0, 3), new_round=st.booleans())  # fmt: skip
    def append(self, n, groups, rs, rank, new_round):
        self.round += int(new_round)
        base = self.counter
        self.counter += n
        x = (torch.arange(n * 6, dtype=torch.float32).view(n, 2, 3) + base).bfloat16()
        y = torch.arange(n * 4, dtype=torch.float32).view(n, 4) - base
        c = torch.arange(n) + 1000 * base
        rows = [(groups[i], float(torch.tensor(rs[i], dtype=torch.float32)), self.round, rank,
                 x[i].float().tolist(), y[i].tolist(), int(c[i])) for i in range(n)]  # fmt: skip
        try:
            self.model.append(rows)
        except BufferError:
            with pytest.raises(BufferError):
                self.buf.append(group=torch.tensor(groups[:n]), reward=torch.tensor(rs[:n]), round=self.round,
                                rank=rank, x=x, y=y, c=c)  # fmt: skip
            return
        self.buf.append(group=torch.tensor(groups[:n], dtype=torch.int64), reward=torch.tensor(rs[:n]),
                        round=self.round, rank=rank, x=x, y=y, c=c)  # fmt: skip

    @rule(k=st.integers(1, 4))
    def top_k(self, k):
        self.model.top_k(k)
        assert self.buf.select("top_k", k=k) == len(self.model.rows)

    @rule(tau=st.floats(-1, 1))
    def threshold(self, tau):
        self.model.threshold(float(torch.tensor(tau, dtype=torch.float32)))
        self.buf.select("threshold", threshold=float(torch.tensor(tau, dtype=torch.float32)))

    @precondition(lambda self: len(self.model.rows) > 0)
    @rule(data=st.data())
    def gather(self, data):
        idx = data.draw(st.lists(st.integers(0, len(self.model.rows) - 1), max_size=6))
        got = self.buf.gather(torch.tensor(idx, dtype=torch.int64), threads=data.draw(st.integers(1, 3)))
        for j, i in enumerate(idx):
            assert got["c"][j].item() == self.model.rows[i][6]
            assert got["y"][j].tolist() == self.model.rows[i][5]

    @rule()
    def save_and_load(self):
        path = os.path.join(self.tmp(), "b.pgb")
        self.buf.save(path)
        self.buf = TrajectoryBuffer.load(path)
        _same(_rows_of(TrajectoryBuffer.open_mmap(path)), self.model.rows)

    @invariant()
    def matches_model(self):
        _same(_rows_of(self.buf), self.model.rows)

    def tmp(self):
        import tempfile

        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp()
        return self._tmp


TestBufferAgainstModel = BufferMachine.TestCase


def test_refuse_policy_and_capacity_errors():
    b = TrajectoryBuffer({"c": ((), torch.int64)}, 3, "refuse")
    b.append(
        group=torch.zeros(2, dtype=torch.int64), reward=torch.zeros(2), round=0, c=torch.zeros(2, dtype=torch.int64)
    )
    with pytest.raises(BufferError, match=r"buffer full: 2 of 3 rows used, cannot append 2 \(policy: refuse\)"):
        b.append(
            group=torch.zeros(2, dtype=torch.int64), reward=torch.zeros(2), round=1, c=torch.zeros(2, dtype=torch.int64)
        )
    with pytest.raises(BufferError, match="cannot append 4 rows to a buffer of capacity 3"):
        b.append(
            group=torch.zeros(4, dtype=torch.int64), reward=torch.zeros(4), round=1, c=torch.zeros(4, dtype=torch.int64)
        )
    assert len(b) == 2


def test_bad_arguments_raise_named_errors():
    with pytest.raises(BufferError, match="dtype torch.float64 is not one of"):
        TrajectoryBuffer({"x": ((2,), torch.float64)}, 4)
    with pytest.raises(BufferError, match="full_policy must be one of"):
        TrajectoryBuffer({"x": ((2,), torch.float32)}, 4, "drop")
    with pytest.raises(BufferError, match="capacity must be a positive int"):
        TrajectoryBuffer({"x": ((2,), torch.float32)}, 0)
    with pytest.raises(BufferError, match="dimension < 1"):
        TrajectoryBuffer({"x": ((0,), torch.float32)}, 4)
    b = TrajectoryBuffer({"x": ((2,), torch.float32)}, 4)
    ok = {"group": torch.zeros(1, dtype=torch.int64), "reward": torch.zeros(1), "round": 0}
    with pytest.raises(BufferError, match=r"field 'x': shape \(1, 3\), expected \(1, 2\)"):
        b.append(**ok, x=torch.zeros(1, 3))
    with pytest.raises(BufferError, match="field 'x': dtype torch.float16, expected torch.float32"):
        b.append(**ok, x=torch.zeros(1, 2, dtype=torch.float16))
    with pytest.raises(BufferError, match=r"append needs exactly the fields \['x'\]"):
        b.append(**ok, z=torch.zeros(1, 2))
    with pytest.raises(BufferError, match="reward must be a tensor of shape"):
        b.append(group=torch.zeros(1, dtype=torch.int64), reward=torch.zeros(2), round=0, x=torch.zeros(1, 2))
    with pytest.raises(BufferError, match="round must be an int32"):
        b.append(group=torch.zeros(1, dtype=torch.int64), reward=torch.zeros(1), round=2**40, x=torch.zeros(1, 2))
    b.append(**ok, x=torch.zeros(1, 2))
    with pytest.raises(BufferError, match="unknown field 'y'"):
        b.field("y")
    with pytest.raises(BufferError, match=r"indices must lie in \[0, 1\)"):
        b.gather(torch.tensor([1]))
    with pytest.raises(BufferError, match="rule must be one of"):
        b.select("top_p", k=1)
    with pytest.raises(BufferError, match="needs an int k >= 1"):
        b.select("top_k", k=0)
    with pytest.raises(BufferError, match="needs a finite threshold"):
        b.select("threshold")


def test_minibatches_are_a_seeded_permutation_in_a_reused_pinned_or_plain_batch():
    b = TrajectoryBuffer({"c": ((), torch.int64)}, 100)
    b.append(group=torch.zeros(10, dtype=torch.int64), reward=torch.zeros(10), round=0, c=torch.arange(10))
    epoch = [mb["c"].clone() for mb in b.minibatches(4, seed=7)]
    assert [len(e) for e in epoch] == [4, 4, 2]
    assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert torch.equal(torch.cat(epoch), torch.cat([mb["c"].clone() for mb in b.minibatches(4, seed=7)]))
    assert not torch.equal(torch.cat(epoch), torch.cat([mb["c"].clone() for mb in b.minibatches(4, seed=8)]))
    assert [len(mb["c"]) for mb in b.minibatches(4, seed=7, drop_last=True)] == [4, 4]


def test_concurrent_appends_from_several_threads_lose_nothing():
    b = TrajectoryBuffer({"c": ((), torch.int64)}, 4000, "refuse")

    def produce(t):
        for j in range(50):
            vals = torch.full((10,), t * 1000 + j, dtype=torch.int64)
            b.append(group=vals, reward=torch.zeros(10), round=0, rank=t, c=vals)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(b) == 2000
    assert sorted(set(b.field("c").tolist())) == sorted(t * 1000 + j for t in range(4) for j in range(50))
    assert torch.equal(b.field("c"), b.meta()["group"])  # rows were never interleaved with others' metadata


def _saved(tmp_path):
    b = TrajectoryBuffer(FIELDS, 8)
    b.append(group=torch.arange(5), reward=torch.linspace(0, 1, 5), round=3, rank=1,
             x=torch.randn(5, 2, 3).bfloat16(), y=torch.randn(5, 4), c=torch.arange(5))  # fmt: skip
    path = tmp_path / "buf.pgb"
    b.save(path)
    return b, path


def test_round_trip_and_read_only_map(tmp_path):
    b, path = _saved(tmp_path)
    assert not (tmp_path / "buf.pgb.tmp").exists()  # the temporary name was renamed away
    for loaded in (TrajectoryBuffer.load(path), TrajectoryBuffer.open_mmap(path)):
        assert loaded.schema == b.schema and loaded.capacity == 8 and len(loaded) == 5
        _same(_rows_of(loaded), _rows_of(b))
    m = TrajectoryBuffer.open_mmap(path)
    with pytest.raises(BufferError, match="read-only memory map"):
        row = {"x": torch.zeros(1, 2, 3).bfloat16(), "y": torch.zeros(1, 4), "c": torch.zeros(1, dtype=torch.int64)}
        m.append(group=torch.zeros(1, dtype=torch.int64), reward=torch.zeros(1), round=0, **row)
    view = m.field("y")
    view.fill_(7.0)  # private pages: the file is untouched
    _same(_rows_of(TrajectoryBuffer.load(path)), _rows_of(b))


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda blob: blob[:40], "truncated"),
        (lambda blob: blob[:-3], "truncated"),
        (lambda blob: blob + b"\0" * 16, "trailing bytes"),
        (lambda blob: b"NOTPGRAF" + blob[8:], "bad magic"),
        (lambda blob: blob[:8] + (2).to_bytes(4, "little") + blob[12:], "unsupported buffer file version 2"),
        (lambda blob: blob[:12] + (5000).to_bytes(4, "little") + blob[16:], r"corrupt header \(field count\)"),
        (lambda blob: blob[:24] + (99).to_bytes(8, "little") + blob[32:], r"corrupt header \(capacity, size"),
        (lambda blob: _flip(blob, -103), "checksum mismatch in field .c."),  # inside field c, before the trailer
        (lambda blob: _flip(blob, 130), "checksum mismatch in the row metadata"),  # inside the group ids
        (lambda blob: blob[:-8] + b"\xff" * 8, "corrupt trailer"),
        (lambda blob: b"", "empty file"),
    ],
)
def test_every_corrupt_file_case_is_a_clear_error(tmp_path, damage, pattern):
    _, path = _saved(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=pattern):
        TrajectoryBuffer.load(path)
    with pytest.raises(CheckpointError, match=pattern if "checksum" not in pattern else "checksum|truncated"):
        TrajectoryBuffer.open_mmap(path)
    with pytest.raises(CheckpointError, match="cannot open"):
        TrajectoryBuffer.load(tmp_path / "missing.pgb")


def _flip(blob: bytes, at: int) -> bytes:
    b = bytearray(blob)
    b[at] ^= 0x5A
    return bytes(b)
