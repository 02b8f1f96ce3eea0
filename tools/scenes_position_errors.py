"""Where the scenes reward errs on position prompts (docs/scenes.md "The reward"): its "yes" rate
on false relations, split into the opposite relation ("right of" for a scene drawn for "left of")
and an orthogonal one ("above"), the latter by how close the scene comes to making it true.

Loads the task's reward as `pgraft demo` does (cache or shipped weights; it never trains one) and
scores fresh real renders of position prompts, each with one false relation drawn from the
prompt's hard negatives. Writes a JSON file; not part of CI.

    python tools/scenes_position_errors.py --out docs/results/scenes_position_errors.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pgraft.config import TaskConfig
from pgraft.errors import CheckpointError
from pgraft.tasks.pretraining import pretrained
from pgraft.tasks.scenes.mini_sd import prompt_table
from pgraft.tasks.scenes.prompts import all_prompts, draw_scene, hard_negatives
from pgraft.tasks.scenes.scene import relation_components, render
from pgraft.tasks.scenes.vqa import MiniVQA

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# an orthogonal relation's offset component (scene.relation_components): it holds above 0.5
MARGIN_BINS = [(-2.0, 0.0), (0.0, 0.2), (0.2, 0.35), (0.35, 0.5)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--out", type=Path, default=Path("runs/scenes_position_errors.json"))
    args = ap.parse_args()
    cfg = TaskConfig(name="scenes")
    s = cfg.scenes
    prompts = all_prompts()

    def missing():
        raise CheckpointError("no trained scenes reward in the cache or the package: `pgraft pretrain --task scenes`")

    net, path = pretrained(cfg, "reward", missing, lambda: MiniVQA(*prompt_table([p.text for p in prompts]), s.vqa),
                           force=False, collective=False)  # fmt: skip
    index = {p: i for i, p in enumerate(prompts)}
    position = [p for p in prompts if p.category == "position"]
    rng = np.random.default_rng(args.seed)
    images, true_ids, false_ids, opposite, margin = [], [], [], [], []
    while len(images) < args.scenes:
        prompt = position[rng.integers(len(position))]
        objects = draw_scene(prompt, rng)
        flips = [q for q in hard_negatives(prompt, objects) if q.category == "position"]
        false = flips[rng.integers(len(flips))]
        images.append(render(objects, rng))
        true_ids.append(index[prompt])
        false_ids.append(index[false])
        opposite.append(OPPOSITE[prompt.relation] == false.relation)
        margin.append(relation_components(objects[0].box, objects[1].box)[false.relation])
    x = torch.from_numpy(np.stack(images))
    net.eval()

    @torch.no_grad()
    def says_yes(ids: list[int]) -> np.ndarray:
        logits = [net(x[i : i + 500], torch.tensor(ids[i : i + 500])) for i in range(0, len(x), 500)]
        return torch.cat(logits).numpy() > 0

    yes_false, yes_true = says_yes(false_ids), says_yes(true_ids)
    opposite, margin = np.array(opposite), np.array(margin)
    rows = [{"false relation": "opposite", "n": int(opposite.sum()), "yes_rate": float(yes_false[opposite].mean())}]
    for lo, hi in MARGIN_BINS:
        m = ~opposite & (margin >= lo) & (margin < hi)
        rows.append({"false relation": f"orthogonal, component in [{lo}, {hi})", "n": int(m.sum()),
                     "yes_rate": float(yes_false[m].mean()) if m.any() else None})  # fmt: skip
    result = {"reward": str(path), "scenes": args.scenes, "seed": args.seed,
              "true_prompt_yes_rate": float(yes_true.mean()), "false_relations": rows}  # fmt: skip
    for r in rows:
        print(f"{r['false relation']:<40} n {r['n']:>5}  yes {r['yes_rate']:.3f}")
    print(f"true prompts: yes {result['true_prompt_yes_rate']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
