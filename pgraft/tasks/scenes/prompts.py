"""The scenes task's prompts: GenEval's six categories over our shapes and colours, each prompt's
requirements (GenEval's include / exclude clauses), scenes that satisfy a prompt, and the edits
that make a prompt false of a scene (hard negatives, and the errors of web-like captions).

Categories, as GenEval tags them:
  single_object  "a circle"                         include circle×1
  two_object     "a square and a circle"            include square×1, circle×1
  counting       "three circles"                    include circle×3, exclude circle×4
  colors         "a red square"                     include square×1 coloured red
  position       "a square left of a circle"        include circle×1, square×1 left of it
  color_attr     "a red square and a blue circle"   include square×1 red, circle×1 blue
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import permutations
from typing import Iterable, Protocol

import numpy as np

from .scene import COLORS, SHAPES, SceneObject, place, relations

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
FLIPPED = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = ("one", "two", "three", "four")
MAX_COUNT = len(NUMBERS)
# A scene drawn for a position prompt holds its relation with this stricter threshold than the
# evaluator's 0.1, so a real render is never a borderline case.
DRAWN_POSITION_THRESHOLD = 0.2


class Located(Protocol):
    """What a prompt's requirements are checked against: a true scene object or a parsed one."""

    shape: str
    color: str

    @property
    def box(self) -> tuple[float, float, float, float]: ...


@dataclass(frozen=True)
class Include:
    shape: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None  # (relation, index of the include clause it refers to)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(shape: str, color: str | None) -> str:
    words = f"{color} {shape}" if color else shape
    return f"{_article(words)} {words}"


@dataclass(frozen=True)
class ScenePrompt:
    """``shapes``/``colors``: the objects the prompt names, in the order its text names them (a
    colour is None where the prompt leaves it open); ``count``: counting's number; ``relation``:
    where ``shapes[0]`` is relative to ``shapes[1]``."""

    category: str
    shapes: tuple[str, ...]
    colors: tuple[str | None, ...]
    count: int = 1
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.category == "counting":
            shape = self.shapes[0]
            return f"{NUMBERS[self.count - 1]} {shape if self.count == 1 else shape + 's'}"
        nouns = [_noun(s, c) for s, c in zip(self.shapes, self.colors)]
        if self.category == "position":
            return f"{nouns[0]} {self.relation} {nouns[1]}"
        return " and ".join(nouns)

    @property
    def includes(self) -> list[Include]:
        if self.category == "counting":
            return [Include(self.shapes[0], self.count)]
        if self.category == "position":  # GenEval lists the reference object first
            return [Include(self.shapes[1]), Include(self.shapes[0], position=(self.relation, 0))]
        return [Include(s, 1, c) for s, c in zip(self.shapes, self.colors)]

    @property
    def excludes(self) -> list[tuple[str, int]]:
        """(shape, n): the scene fails when it shows n or more of that shape."""
        return [(self.shapes[0], self.count + 1)] if self.category == "counting" else []


def all_prompts() -> list[ScenePrompt]:
    """Every prompt of the task, in a fixed order (category, then shapes, colours, counts)."""
    out = [ScenePrompt("single_object", (s,), (None,)) for s in SHAPES]
    out += [ScenePrompt("two_object", pair, (None, None)) for pair in permutations(SHAPES, 2)]
    out += [ScenePrompt("counting", (s,), (None,), count=n) for s in SHAPES for n in range(1, MAX_COUNT + 1)]
    out += [ScenePrompt("colors", (s,), (c,)) for s in SHAPES for c in COLORS]
    out += [
        ScenePrompt("position", pair, (None, None), relation=rel)
        for pair in permutations(SHAPES, 2)
        for rel in RELATIONS
    ]
    out += [
        ScenePrompt("color_attr", pair, cols) for pair in permutations(SHAPES, 2) for cols in permutations(COLORS, 2)
    ]
    return out


def split_prompts(prompts: list[ScenePrompt], held_out_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (training, held-out) prompts: a seeded fraction of each category, at least one on
    each side, so every category is evaluated on prompts the fine-tuning never saw (as GenEval's)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for category in CATEGORIES:
        idx = [i for i, p in enumerate(prompts) if p.category == category]
        n_held = min(max(1, round(held_out_fraction * len(idx))), len(idx) - 1)
        chosen = set(rng.choice(idx, n_held, replace=False).tolist())
        train += [i for i in idx if i not in chosen]
        held += sorted(chosen)
    return sorted(train), sorted(held)


def holds(prompt: ScenePrompt, objects: Iterable[Located]) -> bool:
    """Whether ``objects`` satisfy the prompt, by GenEval's rules: the include clauses hold together
    (each on the first ``count`` objects of its shape, colour and position checked on those), and no
    exclude clause does. ``objects`` are in the order GenEval would rank them (most salient first)."""
    by_shape: dict[str, list[Located]] = {}
    for obj in objects:
        by_shape.setdefault(obj.shape, []).append(obj)
    matched: list[list[Located] | None] = []
    correct = True
    for req in prompt.includes:
        found = by_shape.get(req.shape, [])[: req.count]
        ok = len(found) >= req.count
        if ok and req.color is not None:
            ok = sum(o.color == req.color for o in found) >= req.count
        if ok and req.position is not None:
            relation, target = req.position
            ok = matched[target] is not None and all(
                relation in relations(o.box, t.box) for o in found for t in matched[target]
            )
        matched.append(found if ok else None)
        correct &= ok
    return correct and all(len(by_shape.get(shape, [])) < n for shape, n in prompt.excludes)


def draw_scene(prompt: ScenePrompt, rng: np.random.Generator) -> list[SceneObject]:
    """Objects exactly as the prompt names them (open colours drawn at random) that satisfy it."""
    n = prompt.count if prompt.category == "counting" else len(prompt.shapes)
    shapes = prompt.shapes * n if prompt.category == "counting" else prompt.shapes
    colors = prompt.colors * n if prompt.category == "counting" else prompt.colors
    specs = [(s, c if c is not None else COLORS[rng.integers(len(COLORS))]) for s, c in zip(shapes, colors)]
    if prompt.category == "position":
        return place(specs, rng, lambda o: prompt.relation in relations(o[0].box, o[1].box, DRAWN_POSITION_THRESHOLD))
    return place(specs, rng)


def edits(prompt: ScenePrompt) -> list[tuple[str, ScenePrompt]]:
    """Every one-edit variant of ``prompt`` that is itself a prompt of the task, with its kind:
    shape, colour, count or relation changed, colours swapped, an object or a colour left out."""
    out: list[tuple[str, ScenePrompt]] = []
    for i, shape in enumerate(prompt.shapes):
        for other in SHAPES:
            shapes = prompt.shapes[:i] + (other,) + prompt.shapes[i + 1 :]
            if other != shape and len(set(shapes)) == len(shapes):
                out.append(("shape", replace(prompt, shapes=shapes)))
    for i, color in enumerate(prompt.colors):
        if color is None:
            continue
        for other in COLORS:
            colors = prompt.colors[:i] + (other,) + prompt.colors[i + 1 :]
            if other != color and len(set(colors)) == len(colors):
                out.append(("color", replace(prompt, colors=colors)))
    if prompt.category == "counting":
        out += [("count", replace(prompt, count=n)) for n in range(1, MAX_COUNT + 1) if n != prompt.count]
    if prompt.category == "position":
        out += [("relation", replace(prompt, relation=r)) for r in RELATIONS if r != prompt.relation]
    if prompt.category == "color_attr":
        out.append(("swap", replace(prompt, colors=prompt.colors[::-1])))
        out += [("drop", ScenePrompt("colors", (s,), (c,))) for s, c in zip(prompt.shapes, prompt.colors)]
    if prompt.category in ("two_object", "position"):
        out += [("drop", ScenePrompt("single_object", (s,), (None,))) for s in prompt.shapes]
    if prompt.category == "colors":
        out.append(("drop", ScenePrompt("single_object", prompt.shapes, (None,))))
    return out


# What alt-text does to each category's caption (ours): leaves an object or a colour out, miscounts,
# picks a wrong colour, flips a relation, binds the colours to the wrong objects.
WEB_ERRORS = {
    "single_object": (),
    "two_object": ("drop",),
    "counting": ("count",),
    "colors": ("color", "drop"),
    "position": ("relation",),
    "color_attr": ("swap", "color"),
}


def web_caption(prompt: ScenePrompt, objects: list[SceneObject], rng: np.random.Generator) -> ScenePrompt:
    """A caption of the scene drawn for ``prompt`` as alt-text might write it: one of the category's
    typical errors, chosen at random. A position prompt's flip is to the opposite relation."""
    kinds = WEB_ERRORS[prompt.category]
    if not kinds:
        return prompt
    kind = kinds[rng.integers(len(kinds))]
    options = [p for k, p in edits(prompt) if k == kind]
    if kind == "relation":
        options = [p for p in options if p.relation == FLIPPED[prompt.relation]]
    if kind == "count":  # alt-text miscounts by one
        options = [p for p in options if abs(p.count - prompt.count) == 1]
    return options[rng.integers(len(options))]


def hard_negatives(prompt: ScenePrompt, objects: list[SceneObject]) -> list[ScenePrompt]:
    """One-edit variants of ``prompt`` that are false of ``objects`` (an edit can leave a prompt true:
    "above" may also hold of a scene drawn for "left of")."""
    return [p for _, p in edits(prompt) if not holds(p, objects)]
