"""The bundled data and the task loader, including its error lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from eigenmix.data import bundled_data_dir, load_task, load_tasks, task_names
from eigenmix.errors import InvalidInputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_bundled_tasks_are_compact_and_consistent():
    data_dir = bundled_data_dir()
    meta = json.loads((data_dir / "tasks.json").read_text())["tasks"]
    tasks = load_tasks()
    assert [t.name for t in tasks] == ["sst2", "ag_news", "trec", "sms_spam", "subj", "emotion", "cola", "mrpc"]
    total = sum(p.stat().st_size for p in data_dir.rglob("*.jsonl"))
    assert total < 8 * 1024 * 1024
    for task in tasks:
        assert len(task.train) <= 4000 and len(task.test) <= 1000
        assert list(task.label_names) == meta[task.name]["label_names"]
        counts = Counter(e.label for e in task.train)
        assert [counts[k] for k in range(task.num_labels)] == meta[task.name]["train"]["label_counts"]
    assert next(t for t in tasks if t.name == "mrpc").is_pair


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not beside the checkout")
def test_bundled_subsample_is_stratified_from_the_source():
    source = json.loads((SHARED / "tasks.json").read_text())["tasks"]
    for task in load_tasks():
        src = source[task.name]["train"]["label_counts"]
        got = Counter(e.label for e in task.train)
        for label, n in enumerate(src):
            share = n / sum(src) * len(task.train)
            assert abs(got[label] - share) < 1.0  # largest-remainder rounding


def write_task(folder: Path, train: list[str] | None, test: list[str] | None) -> Path:
    folder.mkdir(parents=True)
    for split, lines in (("train", train), ("test", test)):
        if lines is not None:
            (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


GOOD = ['{"text": "a", "label": 0}', '{"text": "b", "label": 1}']


def test_any_folder_of_tasks_loads(tmp_path):
    write_task(tmp_path / "mine", GOOD, GOOD[:1])
    task = load_tasks(tmp_path)[0]
    assert task.name == "mine" and task.num_labels == 2 and len(task.test) == 1
    assert task_names(tmp_path) == ["mine"]


@pytest.mark.parametrize(
    ("train", "test", "words"),
    [
        (GOOD, None, "missing split test.jsonl"),
        ([], GOOD, "is empty"),
        (GOOD, ['{"text": "a", "label": 0, "extra": 1}'], "unknown field 'extra'"),
        (GOOD, ['{"text": "a", "label": 5}'], "label 5 is out of range for 2 classes"),
        (GOOD, ['{"text": "a", "label": -1}'], "field 'label'"),
        (GOOD, ['{"text": "a"}'], "missing field 'label'"),
        (GOOD, ["{oops"], "not valid JSON"),
    ],
)
def test_bad_task_folder_gets_one_specific_line(tmp_path, train, test, words):
    folder = write_task(tmp_path / "bad", train, test)
    with pytest.raises(InvalidInputError, match=words) as info:
        load_task(folder)
    assert "\n" not in str(info.value)


def test_unknown_task_name(tmp_path):
    write_task(tmp_path / "mine", GOOD, GOOD)
    with pytest.raises(InvalidInputError, match="no task 'other'"):
        load_tasks(tmp_path, ["other"])
