"""Tasks: layout, determinism, caching, ListOps grammar invariants, the LRA TSV reader, npz user data."""
from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest

from edgessm.errors import TaskError
from edgessm.tasks import TaskData, load_task, split_validation, task_names
from edgessm.tasks import listops as lo
from edgessm.tasks import mnist1d as m1


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache folder for the whole file (the default-size datasets are generated once)
    monkeypatch.setenv("EDGESSM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _load_with_test_cache(tmp_path_factory, name: str):
    """Session-scoped load of a task, cached in the test session's temp dir (not the user's cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESSM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield load_task(name)


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    yield from _load_with_test_cache(tmp_path_factory, "mnist1d")


@pytest.fixture(scope="session")
def listops_default(tmp_path_factory):
    yield from _load_with_test_cache(tmp_path_factory, "listops")


SMALL = dict(num_train=300, num_test=100, max_len=64, min_len=16, cache=False)


# ---- an independent ListOps evaluator on token strings ---------------------------------------

def parse(tokens: list[str], i: int = 0, depth: int = 1):
    """Recursive descent: (value, next index, deepest node depth, largest argument count)."""
    t = tokens[i]
    if t.isdigit():
        return int(t), i + 1, depth, 0
    args, deepest, widest = [], depth, 0
    i += 1
    while tokens[i] != "]":
        v, i, dd, ww = parse(tokens, i, depth + 1)
        args.append(v)
        deepest, widest = max(deepest, dd), max(widest, ww)
    value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
             "[MED": lambda a: int(statistics.median(a))}[t](args)
    return value, i + 1, deepest, max(widest, len(args))


def check_listops(x, y, lengths, *, max_len, min_len, max_depth, max_args):
    assert x.dtype == np.int64 and x.shape == (len(y), max_len)
    assert lengths.min() >= min_len and lengths.max() <= max_len
    for row, label, n in zip(x, y, lengths):
        assert (row[:n] != 0).all() and (row[n:] == 0).all()        # padding only at the end
        tokens = [lo.VOCAB[t] for t in row[:n]]
        value, end, depth, width = parse(tokens)
        assert end == n                                              # one complete expression
        assert value == label
        assert depth <= max_depth and 2 <= width <= max_args or (n == 1 and width == 0)


# ---- registry -------------------------------------------------------------------------------

def test_task_names_and_unknown_name():
    assert set(task_names()) == {"mnist1d", "listops", "delay", "smnist"}
    with pytest.raises(TaskError, match=r"unknown task 'cifar'.*delay.*listops.*mnist1d.*smnist.*npz:<path>.*lra-listops:<dir>.*smnist:<dir>"):
        load_task("cifar")
    with pytest.raises(TaskError, match="needs a path"):
        load_task("npz:")


def test_unknown_option_lists_allowed():
    with pytest.raises(TaskError, match=r"unknown option\(s\) bogus; allowed: num_samples"):
        load_task("mnist1d", bogus=1)
    with pytest.raises(TaskError, match="max_len"):
        load_task("listops", lenght=3)


# ---- mnist1d ---------------------------------------------------------------------------------

def test_mnist1d_layout_and_balance(mnist):
    d = mnist
    assert d.task_type == "classification" and d.name == "mnist1d"
    assert d.x_train.shape == (4000, 40, 1) and d.x_train.dtype == np.float32
    assert d.x_test.shape == (1000, 40, 1) and d.y_test.dtype == np.int64
    assert d.y_train.shape == (4000,) and d.y_train.dtype == np.int64
    assert (d.len_train, d.len_test, d.d_input, d.d_output, d.vocab_size, d.seq_len) == (None, None, 1, 10, 0, 40)
    counts = np.bincount(d.y_train, minlength=10)
    assert counts.min() >= 360 and counts.max() <= 440               # 400 each +-10%
    both = np.concatenate([d.x_train, d.x_test])
    assert abs(both.mean()) < 1e-3 and abs(both.std() - 1) < 1e-3    # standardised over train+test together
    assert d.meta["published_baselines"]["cnn"] == 0.94 and d.meta["published_baselines"]["gru"] == 0.91
    json.dumps(d.meta)                                               # JSON-able (goes into checkpoints)


def test_mnist1d_cache_hit(mnist, monkeypatch, tmp_path_factory):
    files = list((tmp_path_factory.getbasetemp() / "cache" / "tasks").glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp"))

    def boom(args):
        raise AssertionError("generator called despite a cached file")

    monkeypatch.setattr(m1, "_generate", boom)
    again = load_task("mnist1d")
    np.testing.assert_array_equal(again.x_train, mnist.x_train)
    np.testing.assert_array_equal(again.y_test, mnist.y_test)


def test_mnist1d_seeded_and_leaves_global_rng_alone():
    np.random.seed(123)
    random.seed(123)
    a = load_task("mnist1d", num_samples=200, cache=False)
    assert np.random.random() == np.random.RandomState(123).random_sample()   # global stream untouched
    assert random.random() == random.Random(123).random()
    b = load_task("mnist1d", num_samples=200, cache=False)
    c = load_task("mnist1d", seed=1, num_samples=200, cache=False)
    assert a.x_train.shape == (160, 40, 1) and a.x_test.shape == (40, 40, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    with pytest.raises(TaskError, match="num_samples"):
        load_task("mnist1d", num_samples=5)


def test_corrupt_cache_file_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESSM_CACHE", str(tmp_path))
    calls = []
    real = lo.generate_listops
    monkeypatch.setattr(lo, "generate_listops", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = {**SMALL, "cache": True}
    first = load_task("listops", **opts)
    [f] = (tmp_path / "tasks").glob("listops-*.npz")
    assert len(calls) == 1 and not list(f.parent.glob("*.tmp"))
    assert load_task("listops", **opts).meta == first.meta and len(calls) == 1     # hit: meta deterministic
    f.write_bytes(b"not a zip")
    again = load_task("listops", **opts)
    assert len(calls) == 2                                           # unreadable file: regenerated
    np.testing.assert_array_equal(first.x_train, again.x_train)
    load_task("listops", **opts)
    assert len(calls) == 2                                           # and rewritten
    json.dumps(first.meta)


# ---- ListOps generator -----------------------------------------------------------------------

def test_listops_small_grammar_invariants():
    d = load_task("listops", **SMALL)
    assert d.vocab_size == 16 and d.d_input == 1 and d.d_output == 10 and d.seq_len == 64
    assert d.len_train.dtype == np.int64 and d.y_train.dtype == np.int64
    check_listops(d.x_train, d.y_train, d.len_train, max_len=64, min_len=16, max_depth=10, max_args=10)
    check_listops(d.x_test, d.y_test, d.len_test, max_len=64, min_len=16, max_depth=10, max_args=10)
    rows = {r.tobytes() for r in np.concatenate([d.x_train, d.x_test])}
    assert len(rows) == 400                                          # distinct, train and test disjoint


def test_listops_tight_bounds_bind():
    # 5 args, depth 4: limits that random trees reach often, so a broken bound would show
    d = load_task("listops", num_train=400, num_test=50, max_len=40, min_len=20, max_depth=4, max_args=5, cache=False)
    check_listops(d.x_train, d.y_train, d.len_train, max_len=40, min_len=20, max_depth=4, max_args=5)
    widths = [parse([lo.VOCAB[t] for t in r[:n]])[3] for r, n in zip(d.x_train, d.len_train)]
    depths = [parse([lo.VOCAB[t] for t in r[:n]])[2] for r, n in zip(d.x_train, d.len_train)]
    assert max(widths) == 5 and max(depths) == 4                     # the limits are reached, not just respected


def test_listops_default_sizes_and_labels(listops_default):
    d = listops_default
    assert d.x_train.shape == (20000, 256) and d.x_test.shape == (2000, 256)
    assert d.len_train.min() >= 64 and d.len_train.max() <= 256
    check_listops(d.x_test[:500], d.y_test[:500], d.len_test[:500], max_len=256, min_len=64, max_depth=10, max_args=10)
    share = np.bincount(d.y_train, minlength=10) / d.n_train
    assert share.min() > 0.05 and share.max() < 0.2                  # 0 and 9 ~15%, the rest ~8-9%
    assert d.meta["label_counts_train"] == np.bincount(d.y_train, minlength=10).tolist()


def test_listops_deterministic_by_seed():
    a, b = load_task("listops", **SMALL), load_task("listops", **SMALL)
    c = load_task("listops", seed=1, **SMALL)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def _reference_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> list[str]:
    """LRA's recursive sampler: operator with probability 0.25 above max_depth, else a digit."""
    if depth < max_depth and rng.random() < 0.25:
        args = [tok for _ in range(rng.randint(2, max_args)) for tok in _reference_tree(rng, depth + 1, max_depth, max_args)]
        return [rng.choice(lo.OPERATORS)] + args + ["]"]
    return [str(rng.randrange(10))]


def test_listops_matches_recursive_sampler_distribution():
    """The vectorised generator draws the same distribution as LRA's recursive one (conditioned on length).

    n = 10000 each: a 0.25 -> 0.28 change of the operator probability moves these means by 5-8
    standard errors (measured), the correct sampler by < 1.1.
    """
    kw = dict(max_len=40, min_len=10, max_depth=6, max_args=5)
    n = 10000
    rng, ref = random.Random(0), []
    while len(ref) < n:
        t = _reference_tree(rng, 1, kw["max_depth"], kw["max_args"])
        if kw["min_len"] <= len(t) <= kw["max_len"]:
            ref.append(t)
    x, y, lengths = lo.generate_listops(n, seed=0, **kw)
    ours = [[lo.VOCAB[t] for t in r[:k]] for r, k in zip(x, lengths)]

    def stats(seqs):
        parsed = [parse(s) for s in seqs]
        return {"length": np.array([len(s) for s in seqs], float),
                "operator_share": np.array([sum(t.startswith("[") for t in s) / len(s) for s in seqs]),
                "depth": np.array([p[2] for p in parsed], float),
                "value": np.array([p[0] for p in parsed])}

    a, b = stats(ours), stats(ref)
    np.testing.assert_array_equal(a["value"], y)
    for key in ("length", "operator_share", "depth"):
        z = (a[key].mean() - b[key].mean()) / np.sqrt(a[key].var() / n + b[key].var() / n)
        assert abs(z) < 4.5, (key, z)
    p, q = np.bincount(a["value"], minlength=10) / n, np.bincount(b["value"], minlength=10) / n
    assert np.abs(p - q).max() < 4.5 * np.sqrt(2 * 0.25 / n)         # label frequencies agree


def test_listops_option_errors():
    with pytest.raises(TaskError, match="min_len=100 exceeds max_len=50"):
        load_task("listops", max_len=50, min_len=100, cache=False)
    with pytest.raises(TaskError, match="longest possible expression"):
        load_task("listops", max_len=500, min_len=400, max_depth=3, max_args=2, cache=False)
    with pytest.raises(TaskError, match="num_train"):
        load_task("listops", num_train=0, cache=False)


def test_evaluate_tokens_median_rounds_down():
    ids = lo.tokenize("[MED 1 2 ] ")
    assert lo.evaluate_tokens(ids) == 1 == int(np.median([1, 2]))
    assert lo.evaluate_tokens(lo.tokenize("[SM 9 8 [MAX 3 7 ] ]")) == (9 + 8 + 7) % 10
    with pytest.raises(ValueError):
        lo.evaluate_tokens(lo.tokenize("[MAX 1 2"))


# ---- LRA TSV reader --------------------------------------------------------------------------

def lra_source(tokens: list[str]) -> str:
    """Format a prefix expression as the LRA release does: each operator application nested in ( ... )."""
    def node(i):
        if tokens[i].isdigit():
            return tokens[i], i + 1
        s, i = "( " + tokens[i], i + 1
        first = True
        while tokens[i] != "]":
            arg, i = node(i)
            s = s + " " + arg + " )" if first else "( " + s + " " + arg + " )"
            first = False
        return "( " + s + " ] )", i + 1
    return node(0)[0]


def write_tsv(path, rows):
    path.write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))


def test_lra_tsv_round_trip(tmp_path):
    d = load_task("listops", num_train=40, num_test=20, max_len=48, min_len=8, cache=False)
    srcs = {}
    for split, x, y, n in (("train", d.x_train, d.y_train, d.len_train), ("test", d.x_test, d.y_test, d.len_test)):
        rows = [(lra_source([lo.VOCAB[t] for t in r[:k]]), int(v)) for r, v, k in zip(x, y, n)]
        write_tsv(tmp_path / f"basic_{split}.tsv", rows)
        srcs[split] = rows
    write_tsv(tmp_path / "basic_val.tsv", srcs["test"][:5])
    assert srcs["train"][0][0].startswith("( ") and "[" in srcs["train"][0][0]
    r = load_task(f"lra-listops:{tmp_path}", cache=False)
    L = r.seq_len
    assert L == max(d.len_train.max(), d.len_test.max())
    np.testing.assert_array_equal(r.x_train, d.x_train[:, :L])
    np.testing.assert_array_equal(r.y_train, d.y_train)
    np.testing.assert_array_equal(r.len_test, d.len_test)
    assert r.vocab_size == 16 and r.meta["vocab"] == lo.VOCAB
    json.dumps(r.meta)
    v = load_task(f"lra-listops:{tmp_path}", split="val", max_len=64, cache=False)
    assert v.n_test == 5 and v.seq_len == 64 and v.meta["test_file"] == "basic_val.tsv"
    short = int(np.median(d.len_train))
    with pytest.raises(TaskError, match="longer than max_len"):
        load_task(f"lra-listops:{tmp_path}", max_len=short, cache=False)
    dropped = load_task(f"lra-listops:{tmp_path}", max_len=short, drop_long=True, cache=False)
    assert dropped.n_train == int((d.len_train <= short).sum()) and dropped.len_train.max() <= short


@pytest.mark.parametrize("mutate, match", [
    (lambda p: (p / "basic_test.tsv").unlink(), "missing basic_test.tsv"),
    (lambda p: (p / "basic_train.tsv").write_text("src\tlabel\n( [MAX 1 2 ] )\t2\n"), "header"),
    (lambda p: write_tsv(p / "basic_train.tsv", [("( [AVG 1 2 ] )", 1)]), "unknown token '\\[AVG'"),
    (lambda p: write_tsv(p / "basic_train.tsv", [("( [MAX 1 2 ] )", 12)]), "outside 0..9"),
    (lambda p: write_tsv(p / "basic_train.tsv", [("( [MAX 1 2 ] )", "x")]), "not an integer"),
])
def test_lra_tsv_errors(tmp_path, mutate, match):
    for split in ("train", "val", "test"):
        write_tsv(tmp_path / f"basic_{split}.tsv", [("( ( ( [MAX 1 ) 2 ) ] )", 2)])
    assert load_task(f"lra-listops:{tmp_path}", cache=False).y_train.tolist() == [2]
    mutate(tmp_path)
    with pytest.raises(TaskError, match=match):
        load_task(f"lra-listops:{tmp_path}", cache=False)


def test_lra_missing_folder(tmp_path):
    with pytest.raises(TaskError, match="not a folder"):
        load_task(f"lra-listops:{tmp_path / 'nope'}")


# ---- npz user data ---------------------------------------------------------------------------

def save(tmp_path, **arrays):
    p = tmp_path / "data.npz"
    np.savez(p, **arrays)
    return f"npz:{p}"


def test_npz_classification_inferred_with_seeded_split(tmp_path):
    rng = np.random.default_rng(0)
    name = save(tmp_path, x=rng.normal(size=(50, 12)), y=rng.integers(0, 3, 50))
    d = load_task(name)
    assert d.task_type == "classification" and d.d_output == 3 and d.d_input == 1
    assert d.x_train.shape == (40, 12, 1) and d.x_test.shape == (10, 12, 1) and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.len_train is None
    json.dumps(d.meta)
    again, other = load_task(name), load_task(name, seed=1)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    assert not np.array_equal(d.x_test, other.x_test)


def test_npz_regression_and_per_step_and_override(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8, 2)).astype(np.float64)
    d = load_task(save(tmp_path, x=x, y=rng.normal(size=30)))
    assert d.task_type == "regression" and d.y_train.shape == (24, 1) and d.y_train.dtype == np.float32
    d = load_task(save(tmp_path, x=x, y=rng.normal(size=(30, 8, 3))))
    assert d.task_type == "regression" and d.per_step_targets and d.y_test.shape == (6, 8, 3) and d.d_output == 3
    yi = rng.integers(0, 4, 30)
    d = load_task(save(tmp_path, x=x, y=yi), task_type="regression")
    assert d.task_type == "regression" and d.y_train.dtype == np.float32 and d.meta["task_type_overridden"]
    d = load_task(save(tmp_path, x=x, y=yi.astype(np.float64)))
    assert d.task_type == "regression"                               # float y -> regression
    d = load_task(save(tmp_path, x=x, y=yi.astype(np.float64)), task_type="classification", num_classes=6)
    assert d.task_type == "classification" and d.d_output == 6 and d.y_train.dtype == np.int64


def test_npz_tokens_explicit_test_and_lengths(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, 7, (20, 10)), rng.integers(0, 7, (5, 10))
    name = save(tmp_path, x=x, y=rng.integers(0, 2, 20), x_test=xt, y_test=rng.integers(0, 2, 5),
                lengths=np.full(20, 10), lengths_test=np.arange(1, 6))
    d = load_task(name, vocab_size=7)
    assert d.vocab_size == 7 and d.x_train.dtype == np.int64 and d.x_train.shape == (20, 10) and d.d_input == 1
    np.testing.assert_array_equal(d.x_test, xt)
    np.testing.assert_array_equal(d.len_test, np.arange(1, 6))
    f = load_task(name)                                              # no vocab_size: integer x read as floats
    assert f.vocab_size == 0 and f.x_train.dtype == np.float32 and f.x_train.shape == (20, 10, 1)


def _arrays():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(20, 6)), "y": rng.integers(0, 3, 20)}


@pytest.mark.parametrize("change, opts, match", [
    (lambda a: a.pop("x"), {}, r"missing array 'x'"),
    (lambda a: a.pop("y"), {}, r"missing array 'y'"),
    (lambda a: a.update(y=a["y"][:-1]), {}, r"'x' has 20 examples but 'y' has shape \(19,\)"),
    (lambda a: a["x"].__setitem__((3, 2), np.nan), {}, r"'x' has 1 NaN/Inf"),
    (lambda a: a.update(y=np.full(20, np.inf)), {}, r"'y' has 20 NaN/Inf"),
    (lambda a: a.update(x=np.zeros((20, 6, 1, 1))), {}, r"'x' must be \(n, L\) or \(n, L, d_input\)"),
    (lambda a: a.update(y=np.r_[a["y"][:-1], 5]), {"num_classes": 3}, r"span \[0, 5\], outside \[0, 3\)"),
    (lambda a: a.update(y=np.r_[a["y"][:-1], -1]), {}, r"span \[-1,"),
    (lambda a: a.update(x_test=a["x"]), {}, r"both 'x_test' and 'y_test'"),
    (lambda a: a.update(lengths=np.full(20, 7)), {}, r"'lengths' has lengths in \[7, 7\], outside \[1, 6\]"),
    (lambda a: a.update(x=np.full((20, 6), 9)), {"vocab_size": 5}, r"token ids in \[9, 9\].*vocab_size"),
    (lambda a: a.update(z=a["x"]), {}, r"unknown arrays \['z'\]"),
    (lambda a: a.update(x_test=np.zeros((4, 5)), y_test=np.zeros(4, int)), {}, r"'x_test' steps/features"),
    (lambda a: a.update(y=np.zeros((20, 5, 1))), {}, r"per-step targets 'y' have 5 steps but 'x' has 6"),
    (lambda a: a.update(y=a["y"] + 0.5), {"task_type": "classification"}, r"non-integer values"),
    (lambda a: None, {"task_type": "ranking"}, r"task_type='ranking' is not one of"),
    (lambda a: a.update(x=np.array(["a"] * 20)), {}, r"'x' has dtype <U1; it must be numeric"),
])
def test_npz_errors(tmp_path, change, opts, match):
    a = _arrays()
    change(a)
    with pytest.raises(TaskError, match=match):
        load_task(save(tmp_path, **a), **opts)


def test_npz_file_errors(tmp_path):
    with pytest.raises(TaskError, match="file not found"):
        load_task(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "t.npz").write_text("x,y\n1,2\n")
    with pytest.raises(TaskError, match="is not an .npz file"):
        load_task(f"npz:{tmp_path / 't.npz'}")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(TaskError, match="single array"):
        load_task(f"npz:{tmp_path / 'one.npy'}")
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object), y=np.zeros(2))
    with pytest.raises(TaskError, match="object \\(pickled\\) array"):
        load_task(f"npz:{tmp_path / 'obj.npz'}")


# ---- validation split and the container ------------------------------------------------------

def test_split_validation_stratified_and_disjoint(mnist):
    d = split_validation(mnist, 0.1, seed=0)
    n_val = d.x_val.shape[0]
    assert d.n_train + n_val == mnist.n_train and d.meta["n_validation"] == n_val
    np.testing.assert_array_equal(d.x_test, mnist.x_test)             # the test set is untouched
    seen = {r.tobytes() for r in d.x_train}
    assert not any(r.tobytes() in seen for r in d.x_val)
    val_share = np.bincount(d.y_val, minlength=10) / n_val
    all_share = np.bincount(mnist.y_train, minlength=10) / mnist.n_train
    assert np.abs(val_share - all_share).max() < 0.005                # stratified
    np.testing.assert_array_equal(d.x_val, split_validation(mnist, 0.1, seed=0).x_val)
    d.validate()
    with pytest.raises(TaskError, match="frac"):
        split_validation(mnist, 1.0)


def test_split_validation_keeps_lengths():
    d = split_validation(load_task("listops", **SMALL), 0.2, seed=3)
    assert d.len_val.shape == (d.x_val.shape[0],) and d.len_train.shape == (d.n_train,)
    assert ((d.x_val != 0).sum(1) == d.len_val).all()


def test_taskdata_validate_catches_bad_layout(mnist):
    with pytest.raises(TaskError, match="x_train must be float32"):
        mnist.replace(x_train=mnist.x_train.astype(np.float64)).validate()
    with pytest.raises(TaskError, match="labels outside"):
        mnist.replace(d_output=5).validate()
    assert isinstance(mnist.validate(), TaskData)
