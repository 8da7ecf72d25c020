"""Splits and served order, each promise checked on its own: `GroupSplitter` holds the share it is asked for (never an empty
validation set, never a group too many), a key without a group is a group of its own, `from_shelf`'s splits are fastai's
`RandomSplitter` and `ColSplitter` applied to the build table, and keys outside the build's row order are never served."""
import math
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai.data.transforms import RandomSplitter, ColSplitter
from fastai_shelve.build import build_shelf
from fastai_shelve.splits import shelf_items
from fastai_shelve.splits import GroupSplitter, shelf_splitter
from fastai_shelve.store import open_shelf

def _valid(groups, items, pct, seed):
    "The validation keys `GroupSplitter` gives `items`."
    train, valid = GroupSplitter(groups, pct, seed=seed)(items)
    assert sorted(list(train) + list(valid)) == list(range(len(items)))  # every item on exactly one side
    return [items[i] for i in valid]

# (items, share): 0.07 * 100 is 7.000000000000001 in floating point, which must not ask for an eighth item
SHARES = [(10, 0.1), (30, 0.1), (5, 0.1), (20, 0.25), (100, 0.07), (1000, 0.07), (7, 0.5), (40, 0.15)]

@pytest.mark.parametrize('n,pct', SHARES)
def test_singletons_give_the_fewest_items_that_hold_the_share(n, pct):
    "Every key its own group: the validation set is the fewest keys holding `valid_pct` of them, never empty, never one too many."
    keys = [f'k{i:04d}' for i in range(n)]
    want = max(1, math.ceil(round(pct * n, 9)))
    for seed in range(5):
        assert len(_valid(pd.Series(keys, index=keys), keys, pct, seed)) == want, (n, pct, seed)

@pytest.mark.parametrize('n,pct', SHARES)
def test_groups_are_whole_and_the_fewest_that_hold_the_share(n, pct):
    "Groups of three: each wholly on one side, and as few as hold the share (a group less would not)."
    keys = [f'k{i:04d}' for i in range(n)]
    groups = pd.Series([f'p{i // 3}' for i in range(n)], index=keys)
    for seed in range(5):
        valid = _valid(groups, keys, pct, seed)
        vg = set(groups[valid])
        assert set(groups.index[groups.isin(vg)]) == set(valid)  # whole groups
        need = round(pct * n, 9)
        if len(vg) < groups.nunique():  # a share under 1 may be capped to leave a group to train on
            assert len(valid) >= need and len(valid) - 3 < need, (n, pct, seed, len(valid))

def test_keys_without_a_group_are_groups_of_their_own():
    "Keys missing from `groups`, or with a missing group, each stand alone: they are never lumped into one group."
    keys = [f'k{i:02d}' for i in range(20)]
    groups = pd.Series({'k00': 'a', 'k01': 'a', 'k02': 'b', 'k03': 'b', 'k04': None, 'k05': np.nan})  # 14 keys not in it
    seen = set()
    for seed in range(30):
        valid = _valid(groups, keys, 0.1, seed)
        assert len(valid) in (2, 3), (seed, valid)  # a, b, two keys alone, or one and a group: never the 16 keys without a group
        seen.update(valid)
    assert len(seen - {'k00', 'k01', 'k02', 'k03'}) > 4  # lone keys do reach the validation set, one by one
    # None of them has a group: a split of single keys, not "all items are one group"
    assert len(_valid(pd.Series(dtype=object), keys, 0.25, 0)) == 5

@pytest.fixture
def table(tmp_path):
    "16 gray PNGs, and a table in another order than the keys, with is_valid and a patient column missing for some rows."
    rng = np.random.default_rng(11)
    ids = [f'im{i:02d}' for i in rng.permutation(16)]
    for k in ids: Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(tmp_path/f'{k}.png')
    df = pd.DataFrame({'fn': ids, 'y': [('cat', 'dog')[i % 2] for i in range(16)], 'is_valid': np.arange(16) % 4 == 1,
                       'patient': [f'p{i // 4}' if i < 8 else None for i in range(16)]})
    return tmp_path, df

def _build(path, df, dest='s.shelf', **kw):
    build_shelf(df, path/dest, path, fn_col='fn', suff='.png', label_col='y', size=8, n_workers=0, progress=False, **kw)
    return path/dest

def test_splits_are_fastais_splitters_on_the_table(table):
    "A second check of the split promise, without `from_df`: `shelf_splitter` gives the indices fastai's splitters give the table."
    path, df = table
    with open_shelf(_build(path, df, valid_col='is_valid')) as s:
        items = shelf_items(s)
        assert items == df.fn.tolist()
        ours = shelf_splitter(s)(items)  # the build's valid_col
        assert [list(o) for o in ours] == [list(o) for o in ColSplitter('is_valid')(df)]
        for pct, seed in ((0.25, 3), (0.5, 0), (0.1, 42)):
            ours = shelf_splitter(s, valid_pct=pct, seed=seed, valid_col=None)(items)
            assert [list(o) for o in ours] == [list(o) for o in RandomSplitter(pct, seed)(df)]

def test_group_col_with_missing_groups_through_the_shelf(table):
    "group_col: a patient's rows together; rows without a patient, each alone (the table stores their missing value)."
    path, df = table
    with open_shelf(_build(path, df)) as s:
        items = shelf_items(s)
        lone = set(df.fn[df.patient.isna()])
        for seed in range(10):
            _, valid = shelf_splitter(s, valid_pct=0.2, seed=seed, group_col='patient')(items)
            valid = [items[i] for i in valid]
            for p in df.set_index('fn').patient[valid].dropna().unique(): assert set(df.fn[df.patient == p]) <= set(valid)
            # 3.2 rows asked for: four lone rows, or up to three and a patient's four; never the 8 rows without a patient as one
            assert 4 <= len(valid) <= 7 and len(set(valid) & lone) <= 4, (seed, valid)

def test_a_categorical_group_col_splits_as_its_values(table):
    "group_col as a pandas category (unused categories, a missing value): the split its values as strings give, seed for seed."
    path, df = table
    cat = df.assign(patient=pd.Categorical(df.patient, categories=[f'p{i}' for i in range(9)]))  # p2..p8: no row
    with open_shelf(_build(path, df)) as s, open_shelf(_build(path, cat, dest='c.shelf')) as c:
        assert isinstance(c.table.patient.dtype, pd.CategoricalDtype)
        items = shelf_items(s)
        for pct, seed in ((0.2, 0), (0.5, 1), (0.7, 3)):
            want = shelf_splitter(s, valid_pct=pct, seed=seed, group_col='patient')(items)
            got = shelf_splitter(c, valid_pct=pct, seed=seed, group_col='patient')(items)
            assert [list(o) for o in got] == [list(o) for o in want] and len(got[0]) > 0

def test_a_valid_col_with_an_empty_row_is_refused_by_name(table):
    "A nullable bool `valid_col` with NA in a row: a `ShelfError` naming the column and the row, not a TypeError mid-way."
    from fastai_shelve.codec import ShelfError
    path, df = table
    df = df.assign(is_valid=pd.array([None] + list(df.is_valid[1:]), dtype='boolean'))
    with open_shelf(_build(path, df)) as s:
        with pytest.raises(ShelfError, match=rf"valid_col 'is_valid' is empty in 1 of the table's rows \(e.g. \['{df.fn[0]}'\]\)"):
            shelf_splitter(s, valid_col='is_valid')

def test_keys_outside_the_build_order_are_never_served(table):
    "Records of rows the latest table dropped, and records written since the build, stay unserved; served keys are in row order."
    path, df = table
    shelf = _build(path, df)
    later = df.iloc[[9, 2, 14, 5]]  # a rerun with four rows, in their own order
    _build(path, later)
    with open_shelf(shelf, 'w') as s:
        s.put_many({'aaa': s[df.fn[0]], 'zzz': s[df.fn[1]]})  # written since the build: before and after every key
    with open_shelf(shelf) as s:
        assert len(s) == 18 and shelf_items(s) == later.fn.tolist()

def test_frames_outside_the_build_order_are_never_served(tmp_path):
    "frame='all': a file the latest table dropped keeps its frames in the shelf, unserved; the rest in row order, frames in order."
    pytest.importorskip('pydicom')
    from test_dicom import cine
    for name, n in (('a', 2), ('b', 3), ('c', 2)): cine(tmp_path, name, n)
    kw = dict(suff='.dcm', size=8, frame='all', n_workers=0, progress=False)
    build_shelf(pd.DataFrame({'id': ['a', 'b', 'c']}), tmp_path/'f.shelf', tmp_path, **kw)
    build_shelf(pd.DataFrame({'id': ['c', 'b']}), tmp_path/'f.shelf', tmp_path, **kw)
    with open_shelf(tmp_path/'f.shelf') as s:
        assert len(s) == 7 and shelf_items(s) == ['c#0000', 'c#0001', 'b#0000', 'b#0001', 'b#0002']
