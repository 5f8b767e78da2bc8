"""Readers, remapping, k-core, leave-one-out and batching."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hail_ext import datasets
from hail_ext.data import DataFormatError, build, k_core_filter, leave_one_out, load
from hail_ext.data.batching import (
    IGNORE,
    cloze_examples,
    eval_inputs,
    next_item_examples,
    shard_order,
)
from hail_ext.data.readers import guess_format, read_csv, read_inter, read_lines


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_lines_keeps_order_and_skips_blank_lines(tmp_path):
    path = _write(tmp_path, "log.txt", "1 5\n1 3\n\n2 5\n1 9\n")
    assert read_lines(path) == [("1", "5"), ("1", "3"), ("2", "5"), ("1", "9")]


@pytest.mark.parametrize(
    "text, line, words",
    [("1 2\n1 2 3\n", 2, "2 fields"), ("1 2\n3 x\n", 2, "integer item"), ("a 2\n", 1, "user")],
)
def test_read_lines_names_file_line_and_expectation(tmp_path, text, line, words):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(DataFormatError, match=rf"bad\.txt, line {line}: .*{words}"):
        read_lines(path)


def test_empty_files_are_rejected(tmp_path):
    for name in ("empty.txt", "empty.inter", "empty.csv"):
        path = _write(tmp_path, name, "")
        with pytest.raises(DataFormatError, match=name.replace(".", r"\.")):
            load(str(path))


def test_read_inter_sorts_by_time_within_user(tmp_path):
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    text += "u1\tb\t5\t20\nu2\ta\t1\t1\nu1\ta\t3\t10\nu1\tc\t4\t20\n"
    rows = read_inter(_write(tmp_path, "x.inter", text))
    assert rows == [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a")]


def test_read_inter_rejects_missing_column_and_bad_time(tmp_path):
    path = _write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\ti\n")
    with pytest.raises(DataFormatError, match=r"x\.inter, line 1: .*timestamp"):
        read_inter(path)
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    path = _write(tmp_path, "y.inter", header + "u\ti\t1\nu\tj\tsoon\n")
    with pytest.raises(DataFormatError, match=r"y\.inter, line 3: .*timestamp"):
        read_inter(path)
    path = _write(tmp_path, "z.inter", header + "u\ti\n")
    with pytest.raises(DataFormatError, match=r"z\.inter, line 2: at least 3 columns"):
        read_inter(path)


def test_read_csv_with_named_columns(tmp_path):
    text = "when,who,what\n3,a,x\n1,a,y\n2,b,x\n"
    path = _write(tmp_path, "log.csv", text)
    rows = read_csv(path, user_col="who", item_col="what", time_col="when")
    assert rows == [("a", "y"), ("a", "x"), ("b", "x")]
    with pytest.raises(DataFormatError, match=r"log\.csv, line 1: .*missing \['user_id'\]"):
        read_csv(path, item_col="what", time_col="when")


def test_guess_format():
    assert guess_format("a/b.inter") == "inter"
    assert guess_format("b.CSV") == "csv"
    assert guess_format("b.txt.gz") == "lines"


def test_build_remaps_items_to_one_based_ids_in_order_of_appearance():
    data = build([("u", "30"), ("u", "10"), ("v", "30"), ("u", "30")])
    assert data.item_ids == ["30", "10"]
    assert [list(s) for s in data.sequences] == [[1, 2, 1], [1]]
    assert data.num_items == 2 and data.num_interactions == 4


def test_k_core_repeats_until_stable():
    # Dropping user c (1 interaction) leaves item z with 1 interaction, then user b with 1.
    pairs = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "z"), ("d", "x"), ("d", "y")]
    pairs = pairs + [("a", "x")]
    kept = k_core_filter(pairs, 2)
    assert {u for u, _ in kept} == {"a", "d"}
    assert all(i in ("x", "y") for _, i in kept)


def test_leave_one_out():
    data = build([("u", str(i)) for i in range(1, 6)] + [("v", "1"), ("v", "2")])
    split = leave_one_out(data)
    assert list(split.users) == [0]
    assert list(split.train[0]) == [1, 2, 3] and list(split.train[1]) == [1, 2]
    assert list(split.history("valid")[0]) == [1, 2, 3]
    assert list(split.targets("valid")) == [4] and list(split.targets("test")) == [5]
    assert list(split.history("test")[0]) == [1, 2, 3, 4]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 30), min_size=1, max_size=5), st.integers(2, 7))
def test_next_item_examples_predict_every_item_but_the_first_once(lengths, max_len):
    sequences = [np.arange(1, n + 1) + 100 * u for u, n in enumerate(lengths)]
    inputs, targets = next_item_examples(sequences, max_len)
    assert inputs.shape == targets.shape and inputs.shape[1] == max_len
    predicted = sorted(targets[targets != IGNORE].tolist())
    expected = sorted(int(x) for seq in sequences for x in seq[1:])
    assert predicted == expected
    # Each target follows its input: the item before it in its sequence.
    rows = targets != IGNORE
    assert np.all(targets[rows] == inputs[rows] + 1)


def test_cloze_examples_mask_at_least_one_item_per_window():
    items = np.array([[0, 0, 3, 4], [5, 6, 7, 8]])
    rng = np.random.default_rng(0)
    inputs, targets = cloze_examples(items, 0.01, 99, rng)
    for row in range(2):
        masked = inputs[row] == 99
        assert masked.sum() >= 1
        assert np.all(targets[row][masked] == items[row][masked])
        assert np.all(targets[row][~masked] == IGNORE)
    big = np.arange(1, 20001).reshape(100, 200)
    inputs, _ = cloze_examples(big, 0.3, -1, np.random.default_rng(1))
    assert abs((inputs == -1).mean() - 0.3) < 0.02
    assert not np.any(cloze_examples(items, 0.5, 99, rng)[0][0, :2] == 99)  # padding stays


def test_shard_order_covers_the_epoch_in_equal_shares():
    shards = [shard_order(11, seed=3, epoch=2, rank=r, world=3) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(np.concatenate(shards)) == set(range(11))
    assert np.array_equal(shard_order(11, 3, 2, 0, 3), shards[0])
    assert not np.array_equal(shard_order(11, 3, 1, 0, 1), shard_order(11, 3, 2, 0, 1))


def test_eval_inputs_end_with_mask_token_for_cloze_models():
    histories = [np.array([1, 2, 3, 4, 5]), np.array([7])]
    assert eval_inputs(histories, 3, None).tolist() == [[3, 4, 5], [0, 0, 7]]
    assert eval_inputs(histories, 3, 9).tolist() == [[4, 5, 9], [0, 7, 9]]


def test_builtin_nyc16_matches_the_shared_file():
    data = load("nyc16")
    # Figures from ../shared/data/README.md.
    assert (data.num_users, data.num_items, data.num_interactions) == (3229, 440, 473887)
    shipped = {p.name for p in __import__("pathlib").Path(datasets.__file__).parent.iterdir()}
    assert not any("toys" in name for name in shipped)
