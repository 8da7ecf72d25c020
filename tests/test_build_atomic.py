"""A build killed at any commit leaves one build's dataset, never a mix: its settings, table and row order are one
transaction, and a shelf whose build stopped says so when it is trained from. Real builds in child processes, killed
by SIGKILL right after their N-th committed write transaction, for every N; then `from_shelf`, compared with fastai's
`ImageDataLoaders.from_df` on the same PNG files and table."""
import os, signal, subprocess, sys, textwrap, warnings
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai.vision.all import ImageDataLoaders, PILImageBW
from fastai_shelve.codec import ShelfError
from fastai_shelve.store import open_shelf
from fastai_shelve.data import ShelfDataLoaders

# The child: `build_shelf(table, shelf)`, killed in its N-th write transaction (everything written, not committed) or right
# after its commit (N=0: never). The commit is LMDB's, at the exit of the shelf's own `txn`; nothing else of the build is touched.
CHILD = textwrap.dedent('''
    import os, signal, sys, pandas as pd
    from contextlib import contextmanager
    from fastai_shelve.lmdb_shelf import Shelf
    from fastai_shelve.build import build_shelf
    table, dest, img, at, when = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    _txn, done = Shelf.txn, [0]
    @contextmanager
    def txn(self, write=False, **kw):
        with _txn(self, write=write, **kw) as t:
            yield t
            if write: done[0] += 1
            if write and done[0] == at and when == 'in': os.kill(os.getpid(), signal.SIGKILL)
        if write and done[0] == at and when == 'after': os.kill(os.getpid(), signal.SIGKILL)
    Shelf.txn = txn
    build_shelf(pd.read_csv(table), dest, img, fn_col='fn', label_col='y', valid_col='is_valid', n_workers=0, commit_every=1,
                progress=False)
''')

@pytest.fixture
def tables(tmp_path):
    "14 gray PNGs; table A names 12 of them; B drops two of A's rows, adds two new ones, and reorders and resplits the rest."
    rng = np.random.default_rng(3)
    for i in range(14): Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path/f'i{i:02d}.png')
    a = pd.DataFrame({'fn': [f'i{i:02d}.png' for i in range(12)], 'y': list('ab') * 6, 'is_valid': [i >= 9 for i in range(12)]})
    b = pd.concat([a.iloc[2:][::-1], pd.DataFrame({'fn': ['i12.png', 'i13.png'], 'y': ['a', 'b']})], ignore_index=True)
    b = b.assign(is_valid=[i % 3 == 0 for i in range(len(b))])
    (tmp_path/'child.py').write_text(CHILD)
    for n, df in (('A', a), ('B', b)): df.to_csv(tmp_path/f'{n}.csv', index=False)
    return tmp_path, a, b

def _build(path, table, dest, at:int=0, when:str='after') -> int:
    "Run the child: `build_shelf` of `table` into `dest`, killed `when` ('in', 'after') its `at`-th write transaction; its return code."
    r = subprocess.run([sys.executable, path/'child.py', path/f'{table}.csv', path/dest, path, str(at), when], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr[-2000:]
    return r.returncode

def _split(dls):
    "(train keys, valid keys): the items, or a DataFrame's file names (fastai's `from_df`)."
    return tuple([str(o) for o in getattr(ds.items, 'fn', ds.items)] for ds in (dls.train_ds, dls.valid_ds))

def _served(shelf):
    "(train keys, valid keys, warnings) of `from_shelf`."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        dls = ShelfDataLoaders.from_shelf(shelf, bs=4, num_workers=0)
    return (*_split(dls), [str(o.message) for o in w if 'build_shelf stopped' in str(o.message)])

def _files(path, df):
    "fastai's split of `df`'s rows on the files, keyed as the shelf keys them."
    return _split(ImageDataLoaders.from_df(df, path, fn_col='fn', label_col='y', valid_col='is_valid', img_cls=PILImageBW, bs=4,
                                           num_workers=0))

def test_a_rebuild_killed_after_any_commit_serves_one_tables_rows(tables):
    "Killed in and after each commit in turn, a rebuild over A's shelf serves A's split, or B's (rows without records left out, with a warning)."
    path, a, b = tables
    split_a, split_b = _files(path, a), _files(path, b)
    seen, points = set(), ((at, when) for at in range(1, 100) for when in ('in', 'after'))
    for at, when in points:
        dest = f's{at}{when}.shelf'
        assert _build(path, 'A', dest) == 0
        rc = _build(path, 'B', dest, at, when)
        train, valid, warned = _served(path/dest)
        with open_shelf(path/dest) as s: table, have = s.table, set(s.keys())
        if (train, valid) == split_a and not warned: seen.add('A')
        else:
            # B's table, B's split, only its rows whose records are written, and a warning while any is missing
            assert sorted(table.index) == sorted(b.fn), f'killed {when} commit {at}: a table of neither build'
            missing = [k for k in b.fn if k not in have]
            assert (train, valid) == tuple([k for k in s if k in have] for s in split_b), f'killed {when} commit {at}: {train}, {valid}'
            assert bool(warned) == bool(missing), (at, when, warned, missing)
            if missing: assert f"{len(missing)} of its table's {len(b)} rows have no record yet" in warned[0]
            seen.add('B' if rc == 0 or not missing else 'B, partly written')
        if rc == 0: break  # the build ran to its end: every commit has been a kill point
    assert seen == {'A', 'B, partly written', 'B'}, seen
    assert _served(path/dest) == (*split_b, [])

def test_a_first_build_killed_before_any_record_says_so(tables):
    "A new shelf whose build was killed before a record is a `ShelfError` saying so (fastai's setup met an empty list: TypeError)."
    path, a, _ = tables
    for when, says in (('in', 'build_shelf writes them'), ('after', 'its build_shelf stopped before writing one')):
        assert _build(path, 'A', f'{when}.shelf', 1, when) == -signal.SIGKILL  # the first write: the settings, table and order
        with pytest.raises(ShelfError, match=f"{when}.shelf has no record to serve: {says}"):
            ShelfDataLoaders.from_shelf(path/f'{when}.shelf', bs=4)
