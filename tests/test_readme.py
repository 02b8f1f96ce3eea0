"""README.md: its example runs as written (budgets shrunk to seconds), it stays a front door
(at most 250 lines), and docs/results.md and its results table are what docs/results/*.json give."""

import re
from pathlib import Path

from pgraft.experiments.results_page import pages, run_results

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_your_model_your_reward_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = re.findall(r"## Your model, your reward.*?```python\n(.*?)```", README.read_text(), re.S)
    shrunk = (
        code.replace('"samples_per_condition": 32', '"samples_per_condition": 8')
        .replace('"k": 4', '"k": 2')
        .replace('"rounds": 2', '"rounds": 1')
        .replace('"steps_per_round": 100', '"steps_per_round": 5')
        .replace("samples_per_class=64", "samples_per_class=8")
    )
    assert shrunk.count('"steps_per_round": 5') == 1 and "samples_per_class=8" in shrunk
    monkeypatch.chdir(tmp_path)
    exec(compile(shrunk, str(README), "exec"), {})
    lines = [line for line in capsys.readouterr().out.splitlines() if ": held-out reward " in line]
    assert [line.split(":")[0] for line in lines] == ["base", "p-graft"]


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 250


def test_the_results_pages_are_what_the_result_files_give():
    """Fails when a result file changed and `pgraft results` was not rerun (or a page was edited by hand)."""
    stale = [str(path.relative_to(ROOT)) for path, text in pages(ROOT).items() if path.read_text() != text]
    assert not stale, f"{stale}: run `pgraft results`"
    assert run_results(ROOT, check=True) == 0
