"""The learning tests' one assertion: a fine-tuned model's held-out reward beats its base's, judged
on the per-sample difference over common held-out noise, with the margin it passed by on record.

Every evaluation draws the same held-out noise for every model (engine/evaluate.py), so the
difference of two evaluations' rewards is paired sample by sample: its CI is the right one for
"A beats B" and is narrower than two separate CIs wherever the tuned model still follows its base
(P-GRAFT below N_I). A learning test must pass on any CPU: its budget is chosen so that the paired
difference sits several half-widths above zero on each arithmetic docs/development.md measures, not
just above the line on the machine it was written on. With ``PGRAFT_MARGINS=<file>`` each call
appends its numbers as a JSON line, which is how that table is made.
"""

from __future__ import annotations

import json
import math
import os

import torch

from pgraft import stats
from pgraft.stats import Z95


def paired_difference(tuned, base) -> tuple[float, float, int]:
    """Mean and 95% half-width of the per-sample reward difference (tuned − base), and its n.

    Samples whose reward is not finite under either model are left out of both.
    """
    assert torch.equal(tuned.labels, base.labels), "paired evaluations need the same held-out conditions"
    delta, half, n = stats.paired_difference(tuned.rewards, base.rewards)
    assert n >= 30, f"{n} paired samples are too few for a normal CI"
    return delta, half, n


def record(label: str, **values) -> None:
    """Append a measured statistic (and the bound a test holds it to) to ``$PGRAFT_MARGINS``, if set."""
    path = os.environ.get("PGRAFT_MARGINS")
    if path:
        entry = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "label": label, **values}
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def assert_rises(tuned, base, label: str) -> None:
    """The tuned model's mean held-out reward exceeds the base's: the paired 95% CI excludes 0."""
    delta, half, n = paired_difference(tuned, base)
    z = delta / half * Z95 if half > 0 else math.inf
    record(label, delta=delta, half_width=half, z=z, n=n, base=base.reward_mean, tuned=tuned.reward_mean)
    assert delta - half > 0, f"{label}: held-out reward difference {delta:+.4g} ± {half:.3g} (95%) does not exclude 0"
