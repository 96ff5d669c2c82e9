import pytest

from headguard.errors import InputError
from headguard.models.task import Task
from headguard.prompts import read_prompts


def test_reads_strings_and_objects(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain"\n{"text": "object"}\n\n{"prompt": "alias"}\n', encoding="utf-8")
    assert read_prompts(path) == ["plain", "object", "alias"]


@pytest.mark.parametrize(
    "content, message",
    [(b"\xff\xfe broken", "not UTF-8"), (b"", "no prompts"), (b"{oops\n", "not a JSON line"),
     (b'{"text": ""}\n', "non-empty"), (b'{"other": 1}\n', "non-empty"),
     (b'{"text": "fine \\ud800"}\n', "lone surrogate at character 5")],
)
def test_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_prompts(tmp_path / "nope.jsonl")


def test_task_is_inferred_for_plain_folders(tmp_path, minilm_folder):
    task = Task.load(minilm_folder)  # the base ships no task.json
    assert task.kind == "encoder"
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert Task.load(tmp_path).kind == "decoder"
    with pytest.raises(InputError, match="config.json"):
        Task.load(tmp_path / "missing")
