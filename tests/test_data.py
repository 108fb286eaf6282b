"""Reading, validating, splitting and storing (query, document) pairs."""

import csv
import re

import pytest

from finetuner.data import dataset
from finetuner.data import pairs as data
from finetuner.data.pairs import EvalSet, deduplicate, read_pairs, split_by_query
from finetuner.errors import FinetunerError
from finetuner.io import storage


@pytest.fixture(autouse=True)
def restore_csv_field_limit():
    # read_pairs sets csv's process-wide field size limit from MAX_FIELD_CHARS, which some
    # tests make tiny; put it back so no other test inherits it.
    limit = csv.field_size_limit()
    yield
    csv.field_size_limit(limit)


def write(tmp_path, content, name="pairs.csv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def read_error(uri):
    with pytest.raises(FinetunerError) as info:
        read_pairs(uri)
    return str(info.value)


# ---------------------------------------------------------------- reading


def test_read_local_file_with_header(tmp_path):
    uri = write(tmp_path, "query,document\nwhat is a cat,a small feline\n  dogs  , bark \n")
    assert read_pairs(uri) == [("what is a cat", "a small feline"), ("dogs", "bark")]


@pytest.mark.parametrize("header", ["Query,Document", "anchor,positive", "question , answer"])
def test_other_header_names_are_skipped(tmp_path, header):
    uri = write(tmp_path, f"{header}\nq,d\n")
    assert read_pairs(uri) == [("q", "d")]


def test_without_header_first_row_is_a_pair(tmp_path):
    uri = write(tmp_path, "q1,d1\nq2,d2")  # and no newline at the end
    assert read_pairs(uri) == [("q1", "d1"), ("q2", "d2")]


def test_header_names_after_the_first_row_are_data(tmp_path):
    uri = write(tmp_path, "q1,d1\nquery,document\n")
    assert read_pairs(uri) == [("q1", "d1"), ("query", "document")]


def test_quoted_fields_with_commas_and_newlines(tmp_path):
    content = (
        'query,document\n"cats, dogs","one line\nand another"\n"say ""hi""",plain\nlast,row\r\n'
    )
    uri = write(tmp_path, content)
    assert read_pairs(uri) == [
        ("cats, dogs", "one line\nand another"),
        ('say "hi"', "plain"),
        ("last", "row"),
    ]


def test_blank_lines_are_skipped(tmp_path):
    uri = write(tmp_path, "query,document\n\nq1,d1\n   \n,\n\nq2,d2\n\n")
    assert read_pairs(uri) == [("q1", "d1"), ("q2", "d2")]


def test_read_from_s3(s3):
    uri = f"s3://{s3}/x.csv"
    storage.write_bytes(uri, b'query,document\n"a, b","c\nd"\ne,f\n')
    assert read_pairs(uri) == [("a, b", "c\nd"), ("e", "f")]


def test_other_encoding(tmp_path):
    uri = write(tmp_path, "caf\xe9,cr\xe8me\n".encode("latin-1"))
    assert read_pairs(uri, encoding="latin-1") == [("café", "crème")]
    assert "not valid utf-8" in read_error(uri)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("content", [b"", b"   \n\n\t\r\n"])
def test_empty_file(tmp_path, content):
    uri = write(tmp_path, content)
    message = read_error(uri)
    assert message.startswith(f"{uri} is empty")


def test_header_only(tmp_path):
    uri = write(tmp_path, "query,document\n\n")
    assert read_error(uri).startswith(f"{uri} has a header but no data rows")


# Each case: file content, the line and (where it applies) column named, and a phrase.
BAD_ROWS = {
    "ragged row": ("q1,d1\nq2,d2\nq3,d3,extra\nq4,d4\n", "line 3:", "found 3"),
    "one column": ("query,document\nq1,d1\nonly a query\n", "line 3:", "found 1"),
    "after a multi-line field": ('q1,"d\n1\n2"\n\nq2,d2,x\n', "line 5:", "found 3"),
    "empty query": ("q1,d1\n\n  ,d2\n", "line 3, column 1 (query)", "empty query"),
    "empty document": ("q1,d1\nq2,\n", "line 2, column 2 (document)", "empty document"),
    "empty quoted document": ('q1,d1\nq2,"  "\n', "line 2, column 2 (document)", "empty"),
}


@pytest.mark.parametrize("content, where, what", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_row(tmp_path, content, where, what):
    uri = write(tmp_path, content)
    message = read_error(uri)
    assert message.startswith(f"{uri}, {where}")
    assert what in message


def test_invalid_utf8_names_its_line(tmp_path):
    uri = write(tmp_path, b"q1,d1\nq2,d2\nq3,caf\xe9\nq4,d4\n")
    message = read_error(uri)
    assert message.startswith(f"{uri}, line 3, column 2:")
    assert "not valid utf-8" in message


def test_nul_byte_names_its_line(tmp_path):
    uri = write(tmp_path, b"q1,d1\nq2,d2\nq3,d3\nq4,d\x004\n")
    message = read_error(uri)
    assert message.startswith(f"{uri}, line 4:")
    assert "NUL byte" in message


def test_unterminated_quote_is_malformed_csv(tmp_path):
    uri = write(tmp_path, 'q1,d1\nq2,"d2\nq3,d3\nq4,d4\n')
    message = read_error(uri)
    assert message.startswith(f"{uri}, line 2: malformed CSV")


def test_field_longer_than_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_FIELD_CHARS", 10)
    ok = write(tmp_path, "q,0123456789\n", name="ok.csv")
    assert read_pairs(ok) == [("q", "0123456789")]

    uri = write(tmp_path, "q1,d1\nq2,d2\n01234567890,d3\n")
    message = read_error(uri)
    assert message.startswith(f"{uri}, line 3, column 1 (query): 11 characters")
    assert "limit of 10" in message

    uri = write(tmp_path, 'q1,d1\nq2,"0123\n567890"\n', name="doc.csv")
    message = read_error(uri)
    assert message.startswith(f"{uri}, line 2, column 2 (document): 11 characters")


def test_much_longer_field_names_its_column(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_FIELD_CHARS", 10)
    uri = write(tmp_path, "q1,d1\nq2," + "x" * 50 + "\n")
    assert read_error(uri).startswith(f"{uri}, line 2, column 2 (document): 50 characters")


def test_header_after_byte_order_mark_is_skipped(tmp_path):
    uri = write(tmp_path, "query,document\nq,d\n".encode("utf-8-sig"))
    assert read_pairs(uri) == [("q", "d")]


def test_missing_local_file(tmp_path):
    uri = str(tmp_path / "nope.csv")
    message = read_error(uri)
    assert uri in message
    assert "does not exist" in message


def test_missing_s3_key(s3, s3_server):
    uri = f"s3://{s3}/no/such.csv"
    message = read_error(uri)
    assert message == f"{uri} does not exist (endpoint {s3_server.endpoint})"


# ---------------------------------------------------------------- dedup and split


def test_deduplicate_keeps_first_occurrence_order():
    pairs = [("b", "2"), ("a", "1"), ("b", "2"), ("a", "3"), ("a", "1"), ("c", "1")]
    assert deduplicate(pairs) == [("b", "2"), ("a", "1"), ("a", "3"), ("c", "1")]
    assert deduplicate([]) == []


def many_pairs(n_queries=200):
    # Queries with 1 to 3 documents each, interleaved so that a query's pairs are scattered.
    pairs = [(f"q{i}", f"d{i}-{j}") for j in range(3) for i in range(n_queries) if i % 3 >= j]
    return pairs


def test_split_holds_out_whole_queries():
    pairs = many_pairs()
    train, held = split_by_query(pairs, 0.2, seed=0)
    train_q, held_q = {q for q, _ in train}, {q for q, _ in held}
    assert not train_q & held_q
    assert train_q | held_q == {q for q, _ in pairs}
    assert len(held_q) == 40  # 20% of 200 queries
    # Every pair of a held-out query is held out; nothing is lost or duplicated, order is kept.
    assert held == [p for p in pairs if p[0] in held_q]
    assert train == [p for p in pairs if p[0] not in held_q]


@pytest.mark.parametrize("val_split, n_held", [(0.1, 20), (0.25, 50), (0.5, 100), (0.9, 181)])
def test_split_fraction(val_split, n_held):
    train, held = split_by_query(many_pairs(201), val_split, seed=1)
    assert len({q for q, _ in held}) == n_held
    assert len({q for q, _ in train}) == 201 - n_held


def test_split_zero_keeps_everything_for_training():
    pairs = many_pairs(10)
    assert split_by_query(pairs, 0.0, seed=0) == (pairs, [])


def test_split_is_deterministic_under_seed():
    pairs = many_pairs()
    assert split_by_query(pairs, 0.3, seed=7) == split_by_query(list(pairs), 0.3, seed=7)
    # The split depends on the set of queries, not on the order of the pairs.
    _, held = split_by_query(pairs, 0.3, seed=7)
    _, held_reversed = split_by_query(pairs[::-1], 0.3, seed=7)
    assert {q for q, _ in held} == {q for q, _ in held_reversed}


def test_split_differs_across_seeds():
    pairs = many_pairs()
    held = [{q for q, _ in split_by_query(pairs, 0.3, seed=s)[1]} for s in range(3)]
    assert held[0] != held[1] and held[0] != held[2] and held[1] != held[2]


@pytest.mark.parametrize("val_split", [-0.1, 1.0, 1.5, float("nan")])
def test_split_invalid_fraction(val_split):
    with pytest.raises(FinetunerError, match=re.escape("must be in [0, 1)")):
        split_by_query(many_pairs(10), val_split, seed=0)


@pytest.mark.parametrize(
    "n_queries, val_split",
    [(1, 0.5), (3, 0.1), (3, 0.9), (201, 0.999), (0, 0.2)],  # none held out / none left to train on
)
def test_split_that_leaves_a_side_empty(n_queries, val_split):
    pairs = [(f"q{i}", f"d{i}-{j}") for i in range(n_queries) for j in range(2)]
    with pytest.raises(FinetunerError, match=f"{val_split} of {n_queries} distinct queries"):
        split_by_query(pairs, val_split, seed=0)


# ---------------------------------------------------------------- eval set and Parquet


def test_eval_set_from_pairs():
    pairs = [("q1", "d1"), ("q2", "shared"), ("q1", "d2"), ("q3", "shared"), ("q2", "d3")]
    ev = EvalSet.from_pairs(pairs)
    assert ev.queries == ["q1", "q2", "q3"]
    assert ev.corpus == ["d1", "shared", "d2", "d3"]  # deduplicated, first-seen order
    assert len(ev.relevant) == len(ev.queries)
    relevant_docs = {
        q: {ev.corpus[i] for i in rel} for q, rel in zip(ev.queries, ev.relevant, strict=True)
    }
    assert relevant_docs == {"q1": {"d1", "d2"}, "q2": {"shared", "d3"}, "q3": {"shared"}}
    # A query's relevant set is exactly the documents paired with it.
    for q, rel in zip(ev.queries, ev.relevant, strict=True):
        assert {ev.corpus[i] for i in rel} == {d for qq, d in pairs if qq == q}


def test_eval_set_ignores_duplicate_pairs():
    ev = EvalSet.from_pairs([("q", "d"), ("q", "d"), ("q", "e")])
    assert ev.queries == ["q"] and ev.corpus == ["d", "e"] and ev.relevant == [{0, 1}]


@pytest.mark.parametrize(
    "kind, rows",
    [
        ("pairs", [("q1", "d, with comma"), ("q\nmulti", 'quote " ü'), ("q1", "d2")]),
        ("labeled", [("an item", "a"), ("another", "b")]),
        ("scored", [("t1", "t2", 0.5), ("t3", "t4", -1.0)]),
    ],
)
def test_dataset_round_trip_keeps_rows_and_kind(tmp_path, kind, rows):
    assert dataset.write(rows, tmp_path / "ds", kind) == len(rows)
    loaded = dataset.load(tmp_path / "ds")
    assert loaded.kind == kind and loaded.rows(list(range(len(rows)))) == rows
