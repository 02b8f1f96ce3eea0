"""The scenes task's world: seeded renders, prompts whose captions are true of their renders, and
a GenEval-like evaluator that passes real renders and fails the classic errors."""

import collections

import numpy as np
import pytest

from pgraft.tasks.scenes import geneval
from pgraft.tasks.scenes.prompts import (
    CATEGORIES,
    all_prompts,
    draw_scene,
    edits,
    hard_negatives,
    holds,
    split_prompts,
    web_caption,
)
from pgraft.tasks.scenes.scene import PALETTE, SceneObject, relations, render

PROMPTS = all_prompts()


def _prompt(text):
    return next(p for p in PROMPTS if p.text == text)


def _image(*objects, seed=0, size=32):
    return render(list(objects), np.random.default_rng(seed), size)


def test_prompt_set_covers_genevals_categories():
    counts = collections.Counter(p.category for p in PROMPTS)
    assert set(counts) == set(CATEGORIES)
    assert len({p.text for p in PROMPTS}) == len(PROMPTS)
    texts = {p.text for p in PROMPTS}
    for text in (
        "a circle",
        "a square and a triangle",
        "three circles",
        "one square",
        "an orange square",
        "a triangle left of a circle",
        "a red square and a blue circle",
    ):
        assert text in texts


def test_split_holds_out_prompts_of_every_category():
    train, held = split_prompts(PROMPTS, 0.25, seed=0)
    assert sorted(train + held) == list(range(len(PROMPTS)))
    assert not set(train) & set(held)
    for ids in (train, held):
        assert {PROMPTS[i].category for i in ids} == set(CATEGORIES)
    assert split_prompts(PROMPTS, 0.25, seed=0) == (train, held)
    assert split_prompts(PROMPTS, 0.25, seed=1) != (train, held)


def test_renders_are_seeded_to_the_bit():
    prompt = _prompt("a red square and a blue circle")

    def draw(seed):
        rng = np.random.default_rng(seed)
        return render(draw_scene(prompt, rng), rng)

    a, b, c = draw(3), draw(3), draw(4)
    assert a.dtype == np.float32 and a.shape == (3, 32, 32)
    assert 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_every_prompts_render_is_true_and_passes_the_evaluator():
    """Caption truth: each prompt's scene satisfies it, and the evaluator sees exactly its objects."""
    rng = np.random.default_rng(0)
    for prompt in PROMPTS:
        for _ in range(2):
            objects = draw_scene(prompt, rng)
            assert holds(prompt, objects), prompt.text
            image = render(objects, rng)
            found = geneval.parse(image)
            assert geneval.well_formed(found), prompt.text
            assert sorted((d.shape, d.color) for d in found) == sorted((o.shape, o.color) for o in objects)
            assert geneval.correct(prompt, image), prompt.text


def test_evaluator_reads_larger_images_alike():
    objects = [SceneObject("triangle", "green", 9.0, 20.0, 4.0), SceneObject("circle", "purple", 22.0, 9.0, 6.0)]
    small, large = geneval.parse(_image(*objects)), geneval.parse(_image(*objects, size=64))
    assert [(d.shape, d.color) for d in small] == [(d.shape, d.color) for d in large]
    for a, b in zip(small, large):
        assert np.allclose(a.box, b.box, atol=1.0)


def test_relations_follow_genevals_rule():
    assert relations((0, 0, 10, 10), (20, 0, 30, 10)) == {"left of"}
    assert relations((20, 0, 30, 10), (0, 0, 10, 10)) == {"right of"}
    assert relations((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    assert relations((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}  # diagonal: both
    # centres 1 px apart, well inside 0.1 × the summed extents: no relation
    assert relations((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    # mostly horizontal offset: the small vertical part does not count
    assert relations((0, 0, 10, 10), (20, 3, 30, 13)) == {"left of"}


@pytest.mark.parametrize(
    "text, objects",
    [
        # colours bound to the wrong objects
        ("a red square and a blue circle", [("square", "blue", 8, 8, 5), ("circle", "red", 22, 22, 5)]),
        ("a red square", [("square", "blue", 16, 16, 5)]),  # wrong colour
        ("a square left of a circle", [("square", "red", 24, 16, 5), ("circle", "blue", 8, 16, 5)]),  # flipped
        ("two circles", [("circle", "red", 7, 7, 4), ("circle", "red", 24, 7, 4), ("circle", "red", 16, 24, 4)]),
        ("a square and a triangle", [("square", "red", 10, 10, 5), ("circle", "red", 22, 22, 5)]),  # wrong object
    ],
)
def test_evaluator_fails_the_classic_errors(text, objects):
    scene = [SceneObject(*o) for o in objects]
    assert not holds(_prompt(text), scene)
    image = _image(*scene)
    assert geneval.well_formed(geneval.parse(image))
    assert not geneval.correct(_prompt(text), image)


def test_merged_and_smeared_objects_are_malformed():
    # two red squares drawn edge to edge read as one wide red object: not a square, so not two squares
    merged = _image(SceneObject("square", "red", 10, 16, 4), SceneObject("square", "red", 18, 16, 4))
    found = geneval.parse(merged)
    assert [d.shape for d in found] == ["malformed"]
    assert not geneval.well_formed(found)
    assert not geneval.correct(_prompt("two squares"), merged)
    # a ragged blob of colour
    rng = np.random.default_rng(0)
    smear = _image()
    blob = rng.random((12, 12)) < 0.55
    for c, v in enumerate(PALETTE["green"]):
        smear[c, 10:22, 10:22][blob] = v
    assert not geneval.well_formed(geneval.parse(smear))
    assert not geneval.well_formed(geneval.parse(_image()))  # nothing drawn


def test_edits_and_hard_negatives_stay_in_the_prompt_set_and_are_false():
    texts = {p.text for p in PROMPTS}
    rng = np.random.default_rng(1)
    kinds = collections.Counter()
    for prompt in PROMPTS:
        for kind, edited in edits(prompt):
            assert edited.text in texts and edited != prompt
            kinds[kind] += 1
        objects = draw_scene(prompt, rng)
        negatives = hard_negatives(prompt, objects)
        assert negatives and not any(holds(p, objects) for p in negatives)
    assert set(kinds) == {"shape", "color", "count", "relation", "swap", "drop"}


def test_web_captions_make_the_categorys_errors():
    rng = np.random.default_rng(2)
    prompt = _prompt("a red square and a blue circle")
    objects = draw_scene(prompt, rng)
    seen = {web_caption(prompt, objects, rng).text for _ in range(60)}
    assert "a blue square and a red circle" in seen  # swapped
    assert all(not holds(_prompt(t), objects) for t in seen)
    flip = web_caption(_prompt("a square left of a circle"), objects, rng)
    assert flip.text == "a square right of a circle"
    count = web_caption(_prompt("three circles"), objects, rng)
    assert count.text in ("two circles", "four circles")
    assert web_caption(_prompt("a circle"), objects, rng).text == "a circle"


def test_score_reports_genevals_categories_and_their_mean():
    rng = np.random.default_rng(3)
    chosen = [_prompt(t) for t in ("a circle", "a red square", "two triangles", "a red square and a blue circle")]
    images = np.stack([render(draw_scene(p, rng), rng) for p in chosen])
    blue_circle = _image(SceneObject("circle", "blue", 16, 16, 5))[None]
    report = geneval.score(chosen + [_prompt("a green circle")], np.concatenate([images, blue_circle]))
    assert report["categories"]["colors"] == 0.5  # the red square right, the "green" circle wrong
    assert report["categories"]["single_object"] == 1.0
    assert report["categories"]["counting"] == 1.0
    assert report["n"] == 5 and report["well_formed"] == 1.0
    assert report["overall"] == pytest.approx(np.mean(list(report["categories"].values())))
