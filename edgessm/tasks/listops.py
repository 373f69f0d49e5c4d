"""ListOps (Nangia & Bowman 2018) as in the Long Range Arena (Tay et al. 2021): our own generator
and a reader for the official LRA release files.

An example is a prefix expression over digits 0-9 with four list operators, its label the
value (10 classes):

    [MAX 2 9 [MIN 4 7 ] 0 ]   ->  9
    MAX, MIN: max / min of the arguments
    MED: median, as int(np.median(args)): for an even count the mean of the middle two,
         rounded down (all values are >= 0)
    SM:  sum modulo 10

Sampling (the LRA generator's distribution, ``lra_benchmarks/data/listops.py``): a node at
depth ``d < max_depth`` is an operator with probability 0.25, else a uniform digit; a node at
``max_depth`` is a digit. The root is depth 1, so depth counts the nodes on the longest
root-to-leaf path, digits included: at most ``max_depth - 1`` nested operators. An operator
takes ``randint(2, max_args)`` arguments and a uniform operator. Trees are drawn until
``num_train + num_test`` distinct token sequences have ``min_len <= length <= max_len``
tokens (rejection sampling, as LRA does); train and test are disjoint. The draw is
vectorised over thousands of trees level by level (``_draw_chunk``): 22000 trees of 64..256
tokens take ~1.5 s, LRA's 98000 of 500..2000 ~40 s. The stream is numpy's PCG64, so the data
are reproducible given the seed and options, not identical to LRA's files.

Arguments per operator: the LRA script's default is ``max_args=10`` (its release,
lengths 500-2000, was built with it); Nangia & Bowman's original used 5. With 5 the branching
is subcritical (0.25 * 3.5 < 1) and only ~0.03% of trees reach 256 tokens, so a length
window of a few hundred tokens is out of reach; we default to LRA's 10. ``max_args=5`` works
with short windows (e.g. ``max_len=128, min_len=32``).

Tokenisation (LRA's, after their fix c209b2a): parentheses dropped, whitespace split,
brackets stay attached to operators. Ids: pad 0, digits "0".."9" -> 1..10, "[MAX" 11,
"[MIN" 12, "[MED" 13, "[SM" 14, "]" 15. vocab_size 16. Right-padded with 0 to ``max_len``.

Defaults (sized to train on 2 CPU cores): 20000 train / 2000 test, lengths 64..256 tokens,
max_depth 10, max_args 10. LRA: 96000/2000/2000, lengths 500..2000.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import TaskError
from .base import TaskData, check_int, check_task_bytes
from .cache import cached_arrays

__all__ = [
    "VOCAB", "TOKEN_TO_ID", "OPERATORS", "PAD", "END", "OPTIONS", "LRA_OPTIONS",
    "load_listops", "load_lra_listops", "generate_listops", "tokenize", "detokenize", "evaluate_tokens",
]

PAD = 0
DIGITS = [str(i) for i in range(10)]
OPERATORS = ["[MAX", "[MIN", "[MED", "[SM"]
VOCAB = ["<pad>"] + DIGITS + OPERATORS + ["]"]           # id -> token
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}
DIGIT0 = TOKEN_TO_ID["0"]                                # digit v has id DIGIT0 + v
OP0 = TOKEN_TO_ID["[MAX"]                                # operator k has id OP0 + k
END = TOKEN_TO_ID["]"]
OPERATOR_P = 0.25                                         # LRA's VALUE_P: P(operator) below max_depth
MAX_DRAWS = 50_000_000                                    # ~1 min of drawing: beyond, the window is hopeless

OPTIONS = {"num_train": 20000, "num_test": 2000, "max_len": 256, "min_len": 64,
           "max_depth": 10, "max_args": 10, "cache": True}
LRA_OPTIONS = {"max_len": None, "split": "test", "drop_long": False, "cache": True}
GENERATOR_VERSION = 1  # bump when the arrays produced for the same options change

PUBLISHED_BASELINES = {
    "note": "LRA ListOps (lengths 500-2000, max_args 10): not comparable with the shorter default here",
    "lra_transformer": 0.3637,   # Tay et al. 2021, Table 1
    "s4": 0.5960,                # Gu et al. 2022 (S4, ICLR), LRA table
    "chance_uniform": 0.10,
}


# ---- evaluation ----------------------------------------------------------------------------

def _apply(op: int, args: Sequence[int]) -> int:
    """op: index into OPERATORS; args: digit values."""
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        s = sorted(args)
        m = len(s) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2   # == int(np.median(s)) for s >= 0
    return sum(args) % 10


def evaluate_tokens(ids: Sequence[int]) -> int:
    """Value of one expression given as token ids (padding ignored). Raises ValueError if malformed."""
    stack: list[list[int]] = [[]]       # argument lists; stack[0] collects the root value
    ops: list[int] = []
    for t in ids:
        t = int(t)
        if t == PAD:
            continue
        if DIGIT0 <= t < DIGIT0 + 10:
            stack[-1].append(t - DIGIT0)
        elif OP0 <= t < OP0 + len(OPERATORS):
            ops.append(t - OP0)
            stack.append([])
        elif t == END:
            if not ops or not stack[-1]:
                raise ValueError("']' without an open operator or with no arguments")
            args = stack.pop()
            stack[-1].append(_apply(ops.pop(), args))
        else:
            raise ValueError(f"token id {t} is not in the ListOps vocabulary")
    if ops or len(stack[0]) != 1:
        raise ValueError("expression is not one complete tree")
    return stack[0][0]


# ---- generation ----------------------------------------------------------------------------

def _draw_chunk(rng: np.random.Generator, K: int, max_len: int, min_len: int, max_depth: int, max_args: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw K trees level by level; return the accepted ones as ((k, max_len) token ids, (k,) values).

    Same distribution as drawing each tree recursively (every node's kind, arity, operator and
    digit are independent), but vectorised over the K trees: level d holds the nodes at depth
    d + 1, children of a node consecutive, in parent order. A tree is rejected as soon as its
    committed tokens plus one per pending child exceed max_len (its final length can only be
    larger), so rejected trees cost about max_len node draws each.
    Legend: K trees, M_d nodes at level d, k accepted trees.
    """
    size = np.zeros(K, dtype=np.int64)                 # (K,) committed tokens: digit 1, operator 2 (op + "]")
    alive = np.ones(K, dtype=bool)                     # (K,) not yet known to exceed max_len
    tree = np.arange(K)                                # (M_0,) tree id of each node
    levels = []
    for d in range(max_depth):
        M = len(tree)
        if d < max_depth - 1:
            is_op = rng.random(M) < OPERATOR_P                           # (M_d,)
        else:
            is_op = np.zeros(M, dtype=bool)                              # depth max_depth: digits only
        arity = np.where(is_op, rng.integers(2, max_args + 1, M), 0)     # (M_d,)
        size += np.bincount(tree, weights=1 + is_op, minlength=K).astype(np.int64)
        pending = np.bincount(tree, weights=arity, minlength=K).astype(np.int64)
        alive &= size + pending <= max_len
        n_child = np.where(alive[tree], arity, 0)                        # (M_d,) children actually drawn
        levels.append((tree, is_op, n_child))
        if not n_child.any():
            break
        tree = np.repeat(tree, n_child)                                  # (M_{d+1},)
    accept = alive & (size >= min_len)                                   # (K,)
    k = int(accept.sum())
    row = np.full(K, -1)
    row[accept] = np.arange(k)                                           # tree id -> output row
    if k == 0:
        return np.zeros((0, max_len), np.int64), np.zeros(0, np.int64)

    # keep only the accepted trees' nodes; re-derive each node's parent within the kept levels
    kept = []                                          # per level: (tree, is_op, n_child, parent index or None)
    old_to_new = None                                  # previous level: full index -> kept index
    for d, (tree, is_op, n_child) in enumerate(levels):
        keep = accept[tree]
        if not keep.any():
            break
        parent = None
        if d > 0:
            prev_tree, _, prev_n_child = levels[d - 1]
            parent_full = np.repeat(np.arange(len(prev_tree)), prev_n_child)   # (M_d,) into level d-1
            parent = old_to_new[parent_full[keep]]
        kept.append((tree[keep], is_op[keep], n_child[keep], parent))
        old_to_new = np.cumsum(keep) - 1

    # draw operators and digits (independent of the shape), then evaluate bottom-up
    vals, subs = [None] * len(kept), [None] * len(kept)
    ops = [rng.integers(0, len(OPERATORS), len(t)) for t, _, _, _ in kept]
    digits = [rng.integers(0, 10, len(t)) for t, _, _, _ in kept]
    for d in range(len(kept) - 1, -1, -1):
        tree, is_op, n_child, _ = kept[d]
        val = digits[d].copy()                                           # (M_d,)
        sub = np.ones(len(tree), dtype=np.int64)                         # (M_d,) subtree token count
        if d + 1 < len(kept) and is_op.any():
            child_parent = kept[d + 1][3]                                # (M_{d+1},) parent index in level d
            child_val = vals[d + 1]
            sub += np.bincount(child_parent, weights=subs[d + 1], minlength=len(tree)).astype(np.int64)
            sub[is_op] += 1                                              # the closing "]"
            starts = np.flatnonzero(np.r_[True, child_parent[1:] != child_parent[:-1]])  # group starts
            owners = child_parent[starts]                                # op nodes, in order
            counts = np.diff(np.r_[starts, len(child_parent)])
            order = np.lexsort((child_val, child_parent))                # sort values within each group
            srt = child_val[order]
            med = (srt[starts + (counts - 1) // 2] + srt[starts + counts // 2]) // 2   # int(np.median)
            op = ops[d][owners]
            val[owners] = np.select(
                [op == 0, op == 1, op == 2],
                [np.maximum.reduceat(child_val, starts), np.minimum.reduceat(child_val, starts), med],
                np.add.reduceat(child_val, starts) % 10)
        vals[d], subs[d] = val, sub

    # prefix positions top-down: a child starts after its parent's token and its earlier siblings
    x = np.zeros((k, max_len), dtype=np.int64)                           # (k max_len), pad 0
    pos = np.zeros(len(kept[0][0]), dtype=np.int64)                      # roots at 0
    for d, (tree, is_op, n_child, parent) in enumerate(kept):
        if d > 0:
            csum = np.cumsum(subs[d]) - subs[d]                          # exclusive cumsum over the level
            first = np.r_[True, parent[1:] != parent[:-1]]
            group_base = np.maximum.accumulate(np.where(first, csum, 0)) # csum at each group's first child
            pos = pos_prev[parent] + 1 + csum - group_base
        r = row[tree]
        x[r, pos] = np.where(is_op, OP0 + ops[d], DIGIT0 + digits[d])
        x[r[is_op], (pos + subs[d] - 1)[is_op]] = END
        pos_prev = pos
    return x, vals[0].astype(np.int64)


def generate_listops(
    n: int, *, seed: int = 0, max_len: int = 256, min_len: int = 64, max_depth: int = 10, max_args: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` distinct expressions with ``min_len <= length <= max_len`` tokens.

    Returns ``x`` int64 (n, max_len) right-padded token ids, ``y`` int64 (n,) values,
    ``lengths`` int64 (n,). Deterministic given the arguments (numpy PCG64 stream).
    """
    longest = 1                                                          # longest tree the grammar allows
    for _ in range(max_depth - 1):
        longest = 2 + max_args * longest
        if longest >= min_len:
            break
    if min_len > longest:
        raise TaskError(f"listops: min_len={min_len} exceeds the longest possible expression ({longest} tokens at "
                        f"max_depth={max_depth}, max_args={max_args}); lower min_len or raise max_depth/max_args")
    rng = np.random.default_rng(seed)
    K = int(np.clip(2**22 // max_len, 1024, 1 << 16))                    # trees per chunk: bounds memory
    seen: set[bytes] = set()
    xs, ys = [], []
    got = drawn = 0
    while got < n:
        # give up early on a window that accepts too few trees (e.g. max_args=5 with min_len=256)
        if drawn >= 1_000_000 and drawn * n > MAX_DRAWS * max(got, 1):
            raise TaskError(
                f"listops: only {got} of {drawn} random trees had {min_len} <= length <= {max_len} "
                f"(max_depth={max_depth}, max_args={max_args}); {n} would take too long: "
                "lower min_len or max_len, or raise max_args")
        x, y = _draw_chunk(rng, K, max_len, min_len, max_depth, max_args)
        drawn += K
        fresh = []
        for i in range(len(x)):
            key = x[i].tobytes()
            if key not in seen:
                seen.add(key)
                fresh.append(i)
        fresh = fresh[: n - got]
        xs.append(x[fresh])
        ys.append(y[fresh])
        got += len(fresh)
    x = np.concatenate(xs)
    return x, np.concatenate(ys), (x != PAD).sum(axis=1).astype(np.int64)


def _pad(seqs: Sequence[Sequence[int]], L: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((len(seqs), L), dtype=np.int64)              # (n L), pad id 0 at the end
    lengths = np.zeros(len(seqs), dtype=np.int64)             # (n,)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        lengths[i] = len(s)
    return x, lengths


def _check_int(name: str, v: Any, lo: int, hi: int = 1 << 20) -> int:
    return check_int("listops", name, v, lo, hi)


def _meta_common() -> dict[str, Any]:
    return {
        "class_names": DIGITS,
        "vocab": VOCAB,
        "pad_id": PAD,
        "tokenisation": "LRA ListOps: parentheses dropped, whitespace split, brackets attached to operators "
                        "('[MAX', '[MIN', '[MED', '[SM', ']'); pad 0, digits 1..10, operators 11..14, ']' 15; "
                        "right-padded",
        "operators": {"[MAX": "max", "[MIN": "min", "[MED": "int(np.median(args)): mean of the middle two "
                      "rounded down for an even count", "[SM": "sum(args) % 10"},
        "published_baselines": PUBLISHED_BASELINES,
    }


def _label_counts(y: np.ndarray) -> list[int]:
    return np.bincount(y, minlength=10).tolist()


def load_listops(seed: int = 0, num_train: int = 20000, num_test: int = 2000, max_len: int = 256,
                 min_len: int = 64, max_depth: int = 10, max_args: int = 10, cache: bool = True) -> TaskData:
    num_train = _check_int("num_train", num_train, 1)
    num_test = _check_int("num_test", num_test, 1)
    max_len = _check_int("max_len", max_len, 1)
    min_len = _check_int("min_len", min_len, 1)
    max_depth = _check_int("max_depth", max_depth, 2)
    max_args = _check_int("max_args", max_args, 2)
    if min_len > max_len:
        raise TaskError(f"listops min_len={min_len} exceeds max_len={max_len}")
    # the int64 token arrays training holds (generation and the uint8 cache take less)
    check_task_bytes("listops", 8.0 * (num_train + num_test) * max_len,
                     f"{num_train + num_test} sequences of max_len={max_len} tokens")
    gen = {"num_train": num_train, "num_test": num_test, "max_len": max_len, "min_len": min_len,
           "max_depth": max_depth, "max_args": max_args, "operator_p": OPERATOR_P}
    spec = {"version": GENERATOR_VERSION, "seed": int(seed), **gen}

    def generate() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        x, y, lengths = generate_listops(num_train + num_test, seed=int(seed), max_len=max_len, min_len=min_len,
                                         max_depth=max_depth, max_args=max_args)
        x = x.astype(np.uint8)                                       # 16 token ids: 8x smaller cache file
        return {"x_train": x[:num_train], "y_train": y[:num_train], "len_train": lengths[:num_train],
                "x_test": x[num_train:], "y_test": y[num_train:], "len_test": lengths[num_train:]}, {}

    a, _, _ = cached_arrays("listops", spec, generate, use_cache=cache)
    meta = {**_meta_common(), "source": "generated locally (edgessm's implementation of the LRA ListOps grammar)",
            "generator": {**gen, "seed": int(seed)},
            "label_counts_train": _label_counts(a["y_train"]), "label_counts_test": _label_counts(a["y_test"])}
    return TaskData(
        name="listops", task_type="classification",
        x_train=a["x_train"].astype(np.int64), y_train=a["y_train"],
        x_test=a["x_test"].astype(np.int64), y_test=a["y_test"],
        len_train=a["len_train"], len_test=a["len_test"],
        d_input=1, d_output=10, vocab_size=len(VOCAB), seq_len=max_len, meta=meta,
    ).validate()


# ---- LRA release files ---------------------------------------------------------------------

def tokenize(source: str) -> list[int]:
    """LRA ListOps source string (with or without parentheses) -> token ids. Raises KeyError on unknown tokens."""
    return [TOKEN_TO_ID[t] for t in source.replace("(", " ").replace(")", " ").split()]


def detokenize(ids: Sequence[int]) -> str:
    return " ".join(VOCAB[int(t)] for t in ids if int(t) != PAD)


def _read_tsv(path: Path) -> tuple[list[list[int]], list[int]]:
    seqs: list[list[int]] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise TaskError(f"{path}: first row must be the header 'Source<TAB>Target' of the LRA ListOps release, "
                            f"got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise TaskError(f"{path}:{lineno}: expected 2 tab-separated columns (Source, Target), got {len(row)}")
            try:
                ids = tokenize(row[0])
            except KeyError as e:
                raise TaskError(f"{path}:{lineno}: unknown token {e.args[0]!r}; ListOps tokens are "
                                f"{', '.join(VOCAB[1:])} and parentheses") from None
            try:
                label = int(row[1])
            except ValueError:
                raise TaskError(f"{path}:{lineno}: Target {row[1]!r} is not an integer") from None
            if not ids:
                raise TaskError(f"{path}:{lineno}: empty Source")
            if not 0 <= label <= 9:
                raise TaskError(f"{path}:{lineno}: Target {label} is outside 0..9")
            seqs.append(ids)
            labels.append(label)
    if not seqs:
        raise TaskError(f"{path}: no examples after the header")
    return seqs, labels


def load_lra_listops(directory: str, seed: int = 0, max_len: Optional[int] = None, split: str = "test",
                     drop_long: bool = False, cache: bool = True) -> TaskData:
    """Read ``basic_train.tsv`` and ``basic_{split}.tsv`` (split: "test" or "val") from the LRA release.

    Sequences are right-padded to ``max_len`` (default: the longest in the two files). A sequence
    longer than ``max_len`` is an error unless ``drop_long=True`` (LRA itself truncates, which
    cuts off the end of the expression that a causal model needs). ``seed`` is unused: the files fix
    the data.
    """
    if split not in ("test", "val"):
        raise TaskError(f"lra-listops split={split!r} is not one of test, val")
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise TaskError(f"lra-listops:{directory}: not a folder; give the folder holding basic_train.tsv, "
                        "basic_val.tsv, basic_test.tsv (LRA release lra_release/listops-1000)")
    paths = {"train": d / "basic_train.tsv", "test": d / f"basic_{split}.tsv"}
    for p in paths.values():
        if not p.is_file():
            raise TaskError(f"lra-listops:{directory}: missing {p.name}; the folder must hold the LRA ListOps release "
                            "files basic_train.tsv, basic_val.tsv, basic_test.tsv")
    if max_len is not None:
        max_len = _check_int("max_len", max_len, 1)
    stats = {k: [os.path.abspath(p), p.stat().st_size, p.stat().st_mtime_ns] for k, p in paths.items()}
    spec = {"version": GENERATOR_VERSION, "files": stats, "max_len": max_len, "drop_long": bool(drop_long)}

    def generate() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        data = {k: _read_tsv(p) for k, p in paths.items()}
        longest = max(len(s) for seqs, _ in data.values() for s in seqs)
        L = longest if max_len is None else max_len
        n = sum(len(seqs) for seqs, _ in data.values())
        check_task_bytes(f"lra-listops:{directory}", 8.0 * n * L, f"{n} sequences padded to max_len={L}")
        out: dict[str, np.ndarray] = {}
        dropped = {}
        for k, (seqs, labels) in data.items():
            keep = [i for i, s in enumerate(seqs) if len(s) <= L]
            if len(keep) < len(seqs) and not drop_long:
                raise TaskError(f"lra-listops: {len(seqs) - len(keep)} sequences in {paths[k].name} are longer than "
                                f"max_len={L} (longest {longest}); raise max_len or pass drop_long=True")
            if not keep:
                raise TaskError(f"lra-listops: every sequence in {paths[k].name} is longer than max_len={L}")
            dropped[k] = len(seqs) - len(keep)
            x, lengths = _pad([seqs[i] for i in keep], L)
            out[f"x_{k}"], out[f"len_{k}"] = x.astype(np.uint8), lengths   # uint8 in the cache file
            out[f"y_{k}"] = np.asarray([labels[i] for i in keep], dtype=np.int64)
        return out, {"dropped_too_long": dropped, "longest": longest}

    a, extra, _ = cached_arrays("lra-listops", spec, generate, use_cache=cache)
    meta = {**_meta_common(), **extra,
            "source": f"LRA ListOps release files {paths['train']}, {paths['test']}",
            "test_file": paths["test"].name,
            "label_counts_train": _label_counts(a["y_train"]), "label_counts_test": _label_counts(a["y_test"])}
    return TaskData(
        name=f"lra-listops:{directory}", task_type="classification",
        x_train=a["x_train"].astype(np.int64), y_train=a["y_train"],
        x_test=a["x_test"].astype(np.int64), y_test=a["y_test"],
        len_train=a["len_train"], len_test=a["len_test"],
        d_input=1, d_output=10, vocab_size=len(VOCAB), seq_len=int(a["x_train"].shape[1]), meta=meta,
    ).validate()
