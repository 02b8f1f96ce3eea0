"""Prompt sets: text files and JSON lines, clear errors, a seeded held-out split."""

import pytest

from pgraft.errors import ConfigError
from pgraft.prompts import load_prompts, split_prompts


def test_text_and_jsonl_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\na red cube\n\n  a blue ball  \n")
    assert [p.text for p in load_prompts(txt)] == ["a red cube", "a blue ball"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "two cats", "tag": "counting"}\n{"prompt": "a dog", "id": 7}\n')
    prompts = load_prompts(jl)
    assert prompts[0].text == "two cats" and prompts[0].meta == {"tag": "counting"} and prompts[1].meta == {"id": 7}


@pytest.mark.parametrize(
    "content,match", [('{"prompt": ""}\n', "non-empty"), ("{oops\n", "not valid JSON"), ('{"text": "x"}\n', "prompt")]
)
def test_bad_jsonl_lines_are_named(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=rf"bad.jsonl:1: .*{match}"):
        load_prompts(f)


def test_missing_or_empty_files_and_the_split(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="no prompt"):
        load_prompts(tmp_path / "empty.txt")
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"prompt {i}" for i in range(10)))
    train, held = split_prompts(load_prompts(f), 0.2, seed=0)
    assert len(train) == 8 and len(held) == 2 and not {p.text for p in train} & {p.text for p in held}
    assert split_prompts(load_prompts(f), 0.2, seed=0) == (train, held)  # seeded
