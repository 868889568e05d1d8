"""Datasets: every loader on small files (JSONL, JSON, CSV, TSV, Parquet, a datasets folder), broken ones too;
column mapping; prompt and chat templates; train / eval splits; seeded order that resumes exactly; long prompts."""

import json
import math

import pytest

from conftest import base_overrides
from rlft.config import Config, ConfigError
from rlft.data import DataError, PromptStream, check_rows, columns_of, load_splits, read_rows

ROWS = [{"prompt": "2+2=", "reference": ["4"], "level": 1}, {"prompt": "3+5=", "reference": ["8", "eight"], "level": 2}]


def _data(**over):
    return Config.load(None, [f"data.{k}={v}" for k, v in over.items()]).data


def _strip(rows):
    return [r.columns for r in rows]


# ------------------------------------------------------------------------------------------ loaders

def test_jsonl_json_csv_tsv_parquet_and_datasets_folder_give_the_same_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # a blank line is fine
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.parquet"):
        rows = read_rows(tmp_path / name)
        assert _strip(rows) == ROWS, name
        assert [r.line for r in rows] == [1, 2]
    (tmp_path / "a.csv").write_text('prompt,reference,level\n2+2=,4,1\n"3+5=","8, or eight",2\n')
    (tmp_path / "a.tsv").write_text("prompt\treference\n2+2=\t4\n")
    rows = read_rows(tmp_path / "a.csv")
    assert _strip(rows) == [{"prompt": "2+2=", "reference": "4", "level": "1"},
                            {"prompt": "3+5=", "reference": "8, or eight", "level": "2"}]
    assert [r.line for r in rows] == [2, 3]  # the header is line 1
    assert _strip(read_rows(tmp_path / "a.tsv")) == [{"prompt": "2+2=", "reference": "4"}]


def test_datasets_folder_one_split_and_a_dict_of_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    assert _strip(read_rows(tmp_path / "one"))[0] == ROWS[0]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"several splits \(train, test\); give one split's folder, e\.g\. .*dd/train"):
        read_rows(tmp_path / "dd")
    assert len(read_rows(tmp_path / "dd" / "train")) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        read_rows(tmp_path / "plain")


@pytest.mark.parametrize("name,content,needle", [
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "bad.jsonl, line 2: not valid JSON"),
    ("bad.jsonl", '{"prompt": "a"}\n["a list"]\n', "bad.jsonl, line 2: expected a JSON object, got list"),
    ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "bad.jsonl, line 2: not valid UTF-8"),
    ("bad.json", '[{"prompt": "a"},\n {"prompt": }]', "bad.json, line 2: not valid JSON"),
    ("bad.json", '[{"prompt": "a"}, 3]', "bad.json, line 2: item 2 is int, expected an object"),
    ("bad.json", '{"prompt": "a"}', "must be a list of objects"),
    ("bad.csv", "prompt,reference\na,b\nc,d,e\n", "bad.csv, line 3: has 3 fields where the header has 2"),
    ("bad.csv", "prompt,reference\na,b\nc\n", "bad.csv, line 3: has 1 fields where the header has 2"),
    ("bad.csv", b"prompt,reference\na,b\n\xff,c\n", "bad.csv, line 3: not valid UTF-8"),
    ("bad.parquet", b"PAR1 this is not parquet", "bad.parquet: not a readable Parquet file"),
    ("bad.xlsx", "x", "unknown dataset format '.xlsx'"),
])
def test_broken_files_name_file_and_line(tmp_path, name, content, needle):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as e:
        read_rows(p)
    assert needle in str(e.value)


def test_bad_rows_skipped_and_counted_when_configured(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"prompt": "a", "reference": "x"}\nnot json\n[1]\n{"prompt": "", "reference": "y"}\n'
                 '{"prompt": 7}\n{"prompt": "b", "reference": 5}\n{"prompt": [{"role": "user"}]}\n'
                 '{"prompt": [{"role": "user", "content": "hi"}]}\n')
    counts = {}
    rows = read_rows(p, "skip", counts)
    assert counts == {"bad_rows": 2} and len(rows) == 6
    rows = check_rows(rows, p, _data(bad_rows="skip"), counts, needs_reference=False)
    assert counts == {"bad_rows": 6}
    assert [r.line for r in rows] == [1, 8]  # the chat-messages row is a valid prompt
    with pytest.raises(DataError, match=r"mixed.jsonl, line 2: not valid JSON .* data.bad_rows=skip"):
        read_rows(p)


@pytest.mark.parametrize("row,needle", [
    ({"prompt": None}, "line 1: no 'prompt' value (data.prompt_column)"),
    ({"prompt": ""}, "line 1: no 'prompt' value"),
    ({"prompt": 3}, "line 1: the 'prompt' value is a int; expected text or a list of chat messages"),
    ({"prompt": [{"content": "hi"}]}, "expected text or a list of chat messages"),
    ({"prompt": "a", "reference": {"x": 1}}, "line 1: the 'reference' value is a dict; expected text"),
    ({"prompt": "a", "reference": [1, 2]}, "the 'reference' value is a list"),
])
def test_bad_row_values_are_errors_naming_the_line(tmp_path, row, needle):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        check_rows(read_rows(p), p, _data(), {}, needs_reference=False)
    assert needle in str(e.value) and "rows.jsonl" in str(e.value)


def test_missing_reference_only_matters_when_needed(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"prompt": "a", "reference": "x"}\n{"prompt": "b"}\n')
    assert len(check_rows(read_rows(p), p, _data(), {}, needs_reference=False)) == 2
    with pytest.raises(DataError, match="line 2: no 'reference' value"):
        check_rows(read_rows(p), p, _data(), {}, needs_reference=True)


def test_parquet_bad_rows_say_row_not_line(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": None}]), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet, row 2: no 'prompt' value"):
        check_rows(read_rows(tmp_path / "p.parquet"), tmp_path / "p.parquet", _data(), {}, False)


# ------------------------------------------------------------------------------------ column mapping

def test_columns_mapping_copies_columns_and_names_a_missing_source(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "2+2=", "answers": ["4", "four"]}) + "\n")
    cfg = _data(train=str(p), columns="{prompt: question, reference: answers}")
    train, _, _ = load_splits(cfg, seed=0, needs_reference=True)
    assert train[0].columns == {"question": "2+2=", "answers": ["4", "four"], "prompt": "2+2=",
                                "reference": ["4", "four"]}
    bad = _data(train=str(p), columns="{prompt: query}")
    with pytest.raises(DataError, match=r"qa.jsonl: data.columns copies column 'query' into 'prompt', but the file "
                                        r"has no column 'query'; its columns are question, answers"):
        load_splits(bad, seed=0)
    # a source column that only some rows lack is an error on those rows
    p.write_text(json.dumps({"question": "2+2="}) + "\n" + json.dumps({"q": "3+3="}) + "\n")
    with pytest.raises(DataError, match=r"qa.jsonl, line 2: no column 'question' to copy into 'prompt' "
                                        r"\(data.columns\)"):
        load_splits(_data(train=str(p), columns="{prompt: question}"), seed=0)


def test_prompt_and_reference_columns_by_name(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"q": "2+2=", "a": "4"}) + "\n")
    train, _, _ = load_splits(_data(train=str(p), prompt_column="q", reference_column="a"), 0, needs_reference=True)
    assert train[0].columns["q"] == "2+2=" and columns_of(train) == {"q": ["2+2="], "a": ["4"]}


# ------------------------------------------------------------------------------------------- splits

def test_eval_split_from_a_file_or_a_seeded_fraction(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(40)))
    e = tmp_path / "e.jsonl"
    e.write_text(json.dumps({"prompt": "held"}) + "\n")
    train, evals, _ = load_splits(_data(train=str(p), eval=str(e)), 0)
    assert len(train) == 40 and [r.columns["prompt"] for r in evals] == ["held"]
    split = lambda seed: load_splits(_data(train=str(p), eval_fraction=0.25), seed)  # noqa: E731
    train, evals, _ = split(0)
    assert len(evals) == 10 and len(train) == 30
    assert not {r.columns["prompt"] for r in train} & {r.columns["prompt"] for r in evals}
    prompts = lambda rows: [r.columns["prompt"] for r in rows]  # noqa: E731
    assert prompts(split(0)[1]) == prompts(evals)      # same seed, same split
    assert prompts(split(1)[1]) != prompts(evals)      # another seed, another split
    with pytest.raises(ConfigError, match="data.train is empty"):
        load_splits(_data(), 0)


def test_prompt_stream_resumes_exactly_across_epochs():
    rows = [{"i": i} for i in range(5)]
    full = PromptStream(rows, seed=3)
    whole = [r["i"] for r in full.next(13)]
    a = PromptStream(rows, seed=3)
    first = [r["i"] for r in a.next(7)]
    state = json.loads(json.dumps(a.state()))  # as a checkpoint stores it
    b = PromptStream(rows, seed=3)
    b.load_state(state)
    assert first + [r["i"] for r in b.next(6)] == whole
    assert sorted(whole[:5]) == list(range(5)) and whole[:5] != whole[5:10]  # each epoch a new permutation
    assert [r["i"] for r in PromptStream(rows, seed=3, shuffle=False).next(6)] == [0, 1, 2, 3, 4, 0]


# ------------------------------------------------------------------------------ through the trainer

COLUMN_REWARD = '''
def uses_level(prompts, completions, level, reference, **_):
    assert len(level) == len(completions) and all(isinstance(x, int) for x in level), level
    assert all(r in (["8", "eight"], ["4"]) for r in reference), reference
    return [float(x) for x in level]
'''


def test_a_datasets_folder_with_mapped_columns_trains_and_columns_reach_rewards(tiny_model_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": r["prompt"], "answer": r["reference"], "level": r["level"]} for r in ROWS] * 4
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    f = tmp_path / "col_reward.py"
    f.write_text(COLUMN_REWARD)
    from rlft.train import train

    cfg = Config.load(None, base_overrides(tiny_model_dir, tmp_path / "ds", tmp_path / "run", **{
        "train.steps": 1, "data.columns": "{prompt: question, reference: answer}",
        "rewards": f"[{{fn: '{f}:uses_level'}}]"}))
    out = train(cfg)
    row = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert math.isclose(row["reward/uses_level"], 1.5)


# --------------------------------------------------------------------- a column missing from the whole file

def test_a_csv_without_the_prompt_column_names_its_header_and_the_fix(tmp_path):
    p = tmp_path / "qa.csv"
    p.write_text("question,answer\n2+2=,4\n3+3=,6\n")
    for bad_rows in ("error", "skip"):  # skipping rows cannot help: the error is the same, not "no usable rows"
        with pytest.raises(DataError) as e:
            load_splits(_data(train=str(p), bad_rows=bad_rows), 0)
        msg = str(e.value)
        assert msg.startswith(f"{p}: no column 'prompt' (the prompts) in the file's header; its columns are "
                              f"question, answer."), msg
        assert "data.prompt_column=question" in msg and "data.columns={prompt: question}" in msg
        assert "bad_rows" not in msg
    # following the advice works
    train, _, _ = load_splits(_data(train=str(p), columns="{prompt: question}"), 0)
    assert [r.columns["prompt"] for r in train] == ["2+2=", "3+3="] and [r.line for r in train] == [2, 3]
    assert len(load_splits(_data(train=str(p), prompt_column="question"), 0)[0]) == 2


def test_a_missing_reference_column_names_data_reference_column_when_a_reference_is_needed(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"prompt": "2+2=", "answer": "4"}) + "\n" + json.dumps({"prompt": "3+3="}) + "\n")
    assert len(load_splits(_data(train=str(p)), 0)[0]) == 2  # not needed: fine
    with pytest.raises(DataError, match=r"qa.jsonl: no column 'reference' \(the references\) in the file's rows; its "
                                        r"columns are prompt, answer\. Set data.reference_column to the column that "
                                        r"holds it \(e\.g\. data.reference_column=answer\), or copy one into "
                                        r"'reference' with data.columns \(e\.g\. data.columns=\{reference: answer\}\)"):
        load_splits(_data(train=str(p), bad_rows="skip"), 0, needs_reference=True)
    train, _, counts = load_splits(_data(train=str(p), reference_column="answer", bad_rows="skip"), 0,
                                   needs_reference=True)
    assert [r.line for r in train] == [1] and counts == {"bad_rows": 1}  # the row without a value: per row


def test_every_key_a_data_message_names_exists():
    from rlft.config import describe

    keys = {row[0] for row in describe()}
    assert {"data.prompt_column", "data.reference_column", "data.columns", "data.bad_rows"} <= keys
