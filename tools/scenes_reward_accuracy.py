"""The scenes reward's held-out accuracy per category against its training budget and size
(docs/scenes.md "The reward").

Trains the task's reward model (MiniVQA) with the task's own code, once per variant (fields of
``task.scenes.vqa`` changed from the defaults), and measures it as ``pgraft demo`` does: on
``reward_check`` fresh real renders of the task's conditions, the mean of "yes" on each scene's true
prompt and "no" on its false one, per category, and on hard negatives alone. Writes a JSON file
(rewritten after every variant); not part of CI.

    python tools/scenes_reward_accuracy.py --variants '[{"steps": 12000}]' \
        --out docs/results/scenes_reward_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pgraft.tasks.scenes.mini_sd import prompt_table
from pgraft.tasks.scenes.task import ScenesConfig, measure_reward, prompt_split
from pgraft.tasks.scenes.vqa import MiniVQA, make_pairs, train_vqa


def measure(changes: dict) -> dict:
    """Train one reward variant on renders of every prompt and measure it on the task's conditions,
    as the task's ``prepare`` does."""
    s = ScenesConfig.model_validate({"vqa": changes})  # the changes validated as a config's are
    prompts, train_ids, held_ids = prompt_split(s)
    conditions = [prompts[i] for i in train_ids + held_ids]
    t0 = time.time()
    pairs = make_pairs(prompts, s.vqa.scenes, s.vqa.seed, s.vqa.hard_fraction, progress=True)
    render_s = time.time() - t0
    net = train_vqa(MiniVQA(*prompt_table([p.text for p in prompts]), s.vqa), pairs, s.vqa, progress=True)
    train_s = time.time() - t0 - render_s
    judge = MiniVQA(*prompt_table([p.text for p in conditions]), s.vqa)  # the task's condition ids
    judge.load_state_dict(net.state_dict())
    times = {"render_s": round(render_s), "train_s": round(train_s)}
    return {"changes": changes, "vqa": s.vqa.model_dump(), **times, **measure_reward(judge.eval(), conditions, s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="[{}]", help="JSON list of task.scenes.vqa changes, one run each")
    ap.add_argument("--out", type=Path, default=Path("runs/scenes_reward_accuracy.json"))
    args = ap.parse_args()
    rows = []
    for changes in json.loads(args.variants):
        rows.append(measure(changes))
        r = rows[-1]
        by_category = r["categories"].items()
        cats = " ".join(f"{c} {v['accuracy']:.3f}/{v['hard_negative_accuracy']:.2f}" for c, v in by_category)
        print(f"{json.dumps(changes)}: overall {r['overall']:.3f} ({cats}); train {r['train_s']} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
