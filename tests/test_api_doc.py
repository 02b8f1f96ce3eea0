"""docs/api.md's example runs as written (with the task and budgets shrunk to seconds)."""

import re
from pathlib import Path

import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_api_example_runs(tmp_path, monkeypatch, capsys):
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))  # the blocks build on each other
    tiny_task = {**yaml.safe_load(TINY.read_text())["task"], "cache_dir": str(tmp_path)}
    shrunk = (
        code.replace("TaskConfig()", f"TaskConfig.model_validate({tiny_task!r})")
        .replace('"samples_per_condition": 32', '"samples_per_condition": 4')
        .replace('"k": 4', '"k": 2')
        .replace('"steps_per_round": 100', '"steps_per_round": 2')
        .replace("samples_per_class=50", "samples_per_class=2")
        .replace('"runs/mine', '"' + str(tmp_path / "mine"))
    )
    shrunk = shrunk.replace("PGraftConfig.model_validate({", 'PGraftConfig.model_validate({"sampler": {"steps": 8},')
    assert shrunk.count("model_validate") == 2
    exec(compile(shrunk, str(DOC), "exec"), {})
    out = capsys.readouterr().out.splitlines()  # DeepSpeed logs to stdout too: match our lines only
    assert [line.split()[0] for line in out if re.fullmatch(r"\d+ [-\d.e]+ \d+", line)] == ["0", "1"]
    assert sum(line.startswith(("base ", "p-graft ")) for line in out) == 2
    assert (tmp_path / "mine" / "checkpoints" / "latest").read_text().startswith("ckpt-r00002")


def test_every_name_the_api_page_lists_is_importable_from_pgraft():
    """docs/api.md's table: each backticked name of its "main names" column (not the module
    paths), as `pgraft.<name>`."""
    import pgraft

    rows = [line.split("|") for line in DOC.read_text().splitlines() if line.startswith("| ") and "`" in line]
    names = {n for row in rows for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row[3])}
    # module-level helpers and words, named with their module in the table
    names -= {"codec", "properties", "duplicate_keys", "report", "capture", "compile_all", "problems", "auto"}
    assert names and not [n for n in sorted(names) if not hasattr(pgraft, n)]
