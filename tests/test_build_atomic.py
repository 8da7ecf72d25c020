"""A build killed at any commit leaves one build's dataset, never a mix: its settings, table and row order are one
transaction, and a shelf whose build stopped says so when it is trained from. Real builds in child processes, killed
by SIGKILL right after their N-th committed write transaction, for every N; then `from_shelf`, compared with fastai's
`ImageDataLoaders.from_df` on the same PNG files and table."""
import os, re, signal, subprocess, sys, textwrap, time, warnings
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
    stopped = [o for o in w if 'build stopped before it finished' in str(o.message)]
    assert all(o.filename == __file__ for o in stopped), [o.filename for o in stopped]  # at the user's line, not ours
    return (*_split(dls), [str(o.message) for o in stopped])

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
    for when, says in (('in', 'build_shelf writes them'), ('after', 'its build stopped before it finished and wrote none yet: '
                                                                     'run the same build_shelf')):
        assert _build(path, 'A', f'{when}.shelf', 1, when) == -signal.SIGKILL  # the first write: the settings, table and order
        with pytest.raises(ShelfError, match=re.escape(f"{when}.shelf has no record to serve: {says}")):
            ShelfDataLoaders.from_shelf(path/f'{when}.shelf', bs=4)

# In-process stops: a Ctrl-C (KeyboardInterrupt) at the point named, as a notebook user's interrupt lands there
KW = dict(fn_col='fn', label_col='y', valid_col='is_valid', n_workers=0, progress=False)

def test_a_refused_rerun_changes_nothing(tables):
    "A rebuild refused for relabelling stored records leaves A's table, order and mark: A's split, no warning (it wrote B's)."
    from fastai_shelve.build import build_shelf
    path, a, b = tables
    build_shelf(path/'A.csv', path/'s.shelf', path, **KW)
    b = b.assign(y=b.y.map({'a': 'b', 'b': 'a'}))  # every stored record relabelled: refused
    with open_shelf(path/'s.shelf') as s: before = s.table.copy(), s.order.copy(), s.meta.as_meta()
    for _ in range(2):  # the advice a refusal gives holds on a second try too
        with pytest.raises(ShelfError, match='other labels than they hold'): build_shelf(b, path/'s.shelf', path, **KW)
    with open_shelf(path/'s.shelf') as s:
        assert s.table.equals(before[0]) and s.order.equals(before[1]) and s.meta.complete is True
    assert _served(path/'s.shelf') == (*_files(path, a), [])

def test_a_stopped_frames_build_splits_as_its_table(tables, tmp_path):
    "frame='all', stopped at a bad file: every frame served has its table row, so the split is the table's (they went to training)."
    from fastai_shelve.build import build_shelf
    path, a, _ = tables
    (path/'i10.png').write_bytes(b'not a png')
    with pytest.raises(ShelfError, match='i10.png'):
        build_shelf(a, path/'f.shelf', path, frame='all', strict=True, commit_every=1, **KW)
    train, valid, warned = _served(path/'f.shelf')
    ftrain, fvalid = _files(path, a)
    written = [f for f in a.fn if f < 'i10.png']
    assert (train, valid) == tuple([f'{f}#0000' for f in s if f in written] for s in (ftrain, fvalid))
    assert valid and warned and f"{len(a) - len(written)} of its table's {len(a)} rows have no record yet" in warned[0]

def test_a_sharded_rebuild_stopped_serves_one_builds_tables(tables, monkeypatch):
    """build_sharded of B stopped before its shards' builds: B's tables and split (with a warning), never A's split in B's order;
    stopped between two shards' first writes: the shards of two builds are refused, naming the shard."""
    import dask
    from fastai_shelve.shards import build_sharded
    from fastai_shelve.lmdb_shelf import Shelf
    path, a, b = tables
    build_sharded(a, path/'sh', 2, path, **{**KW, 'n_workers': 1})
    def stop(*args, **kw): raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(dask, 'compute', stop)
        with pytest.raises(KeyboardInterrupt): build_sharded(b, path/'sh', 2, path, **{**KW, 'n_workers': 1})
    train, valid, warned = _served(path/'sh')
    with open_shelf(path/'sh') as s: have = {k for k in s.keys()}
    assert (train, valid) == tuple([k for k in s if k in have] for s in _files(path, b))
    assert warned and warned[0].endswith('run the same build_sharded (fastai-shelve build --shards) again to resume it')
    update, calls = Shelf.update_meta, []
    def second_stops(self, *args, **kw):  # the second shard's first write
        calls.append('build_id' in kw)
        if sum(calls) == 2: raise KeyboardInterrupt
        return update(self, *args, **kw)
    with monkeypatch.context() as m:
        m.setattr(Shelf, 'update_meta', second_stops)
        with pytest.raises(KeyboardInterrupt): build_sharded(a, path/'sh', 2, path, **{**KW, 'n_workers': 1})
    with pytest.raises(ShelfError, match='disagrees with .* on build_id'): ShelfDataLoaders.from_shelf(path/'sh', bs=4)
    build_sharded(a, path/'sh', 2, path, **{**KW, 'n_workers': 1})  # run again: one build's shards
    assert _served(path/'sh') == (*_files(path, a), [])

def test_a_stopped_convert_says_so(tables, monkeypatch):
    "convert_shelf stopped midway: the copy has the source's table and order from the start, serves its split and warns."
    from fastai_shelve.build import build_shelf, convert_shelf
    from fastai_shelve.lmdb_shelf import Shelf
    path, a, _ = tables
    build_shelf(a, path/'s.shelf', path, **KW)
    put, calls = Shelf.put_many, []
    def second_stops(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return put(self, *args, **kw)
    with monkeypatch.context() as m:
        m.setattr(Shelf, 'put_many', second_stops)
        with pytest.raises(KeyboardInterrupt): convert_shelf(path/'s.shelf', path/'c.shelf', chunk=4, progress=False)
    train, valid, warned = _served(path/'c.shelf')
    with open_shelf(path/'c.shelf') as s: have = set(s.keys())
    assert len(have) == 4 and (train, valid) == tuple([k for k in s if k in have] for s in _files(path, a))
    assert warned and "8 of its table's 12 rows have no record yet" in warned[0]
    assert warned[0].endswith('run the same convert_shelf (fastai-shelve convert) again to resume it')
    convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)  # resumed to its end: the source's mark, no warning
    assert _served(path/'c.shelf') == (*_files(path, a), [])

def test_info_says_a_build_stopped(tables):
    "`shelf_info` (`fastai-shelve info`) says a build stopped and how many rows wait, until a run of it ends."
    from fastai_shelve.build import build_shelf
    from fastai_shelve.info import shelf_info
    path, a, _ = tables
    (path/'i10.png').write_bytes(b'not a png')
    with pytest.raises(ShelfError, match='i10.png'): build_shelf(a, path/'s.shelf', path, strict=True, **KW)
    assert shelf_info(path/'s.shelf')['build'] == ("not finished: its build stopped before it finished: 2 of the table's 12 rows have no "
                                                   "record yet: run the same build_shelf (fastai-shelve build) again to resume it")
    from fastai_shelve.build import convert_shelf
    with pytest.warns(UserWarning, match=r"s\.shelf: its build stopped before it finished, so neither has its copy .*c\.shelf: finish that build"):
        convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)  # a copy of the stopped build: it says what to finish
    build_shelf(a, path/'s.shelf', path, **KW)  # resumed: i11 written, i10 reported bad
    assert shelf_info(path/'s.shelf')['build'] == 'finished'
    with warnings.catch_warnings():
        warnings.simplefilter('error'); convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)
    assert shelf_info(path/'c.shelf')['build'] == 'finished'

def test_a_refused_sharded_rerun_changes_nothing(tables):
    "A build_sharded rerun one shard refuses (its records relabelled) writes no shard: A's split and targets, no warning."
    from fastai_shelve.shards import build_sharded
    path, a, b = tables
    kw = {**KW, 'n_workers': 1}
    build_sharded(a, path/'sh', 2, path, **kw)
    with pytest.raises(ShelfError, match='other labels than they hold'):
        build_sharded(b.assign(y=b.y.map({'a': 'b', 'b': 'a'})), path/'sh', 2, path, **kw)
    assert _served(path/'sh') == (*_files(path, a), [])
    with open_shelf(path/'sh') as s: assert s.meta.complete is True

def test_a_refused_sharded_rerun_writes_no_shard(tables):
    "A refused build_sharded rerun (relabelled records, a foreign shard) leaves every shard file's bytes as they were."
    from fastai_shelve.shards import build_sharded
    path, a, b = tables
    kw = {**KW, 'n_workers': 1}
    build_sharded(a, path/'sh', 2, path, **kw)
    before = {p.name: p.read_bytes() for p in sorted((path/'sh').iterdir())}
    with pytest.raises(ShelfError, match='other labels than they hold'):
        build_sharded(a.assign(y=a.y.map({'a': 'b', 'b': 'a'})), path/'sh', 2, path, **kw)
    assert {p.name: p.read_bytes() for p in sorted((path/'sh').iterdir())} == before
    # another folder's shard (built with other settings too) in place of shard 1: refused as what it is, nothing written
    build_sharded(a, path/'other', 2, path, size=8, **kw)
    (path/'sh'/'shard-001.shelf').write_bytes((path/'other'/'shard-001.shelf').read_bytes())
    before = {p.name: p.read_bytes() for p in sorted((path/'sh').iterdir())}
    with pytest.raises(ShelfError, match="shard-001.shelf is another folder's shard"): build_sharded(a, path/'sh', 2, path, **kw)
    assert {p.name: p.read_bytes() for p in sorted((path/'sh').iterdir())} == before

def test_sharded_from_a_list_of_files_equals_build_shelf(tables):
    "build_sharded of a list of image files keys each record by its file's stem in the shard its key names, as build_shelf does."
    from fastai_shelve.build import build_shelf
    from fastai_shelve.shards import build_sharded
    path, _, _ = tables
    files = sorted(path.glob('i*.png'))
    reports = build_sharded(files, path/'sh', 3, n_workers=1, size=16)
    build_shelf(files, path/'one.shelf', n_workers=0, progress=False, size=16)
    with open_shelf(path/'sh') as sh, open_shelf(path/'one.shelf') as one:
        assert not sh.verify() and sorted(sh.keys()) == sorted(one.keys()) == [f.stem for f in files]
        assert sum(r['written'] for r in reports) == len(files) and sh.meta.complete
        for k in one.keys(): np.testing.assert_array_equal(sh[k]['image'], one[k]['image'])

# A build paused after its first commit (its settings, table and order) until the test lets it go: what a second build, a
# reader, `info` and a copy meet while a build runs
PAUSED = textwrap.dedent('''
    import sys, time, pandas as pd
    from pathlib import Path
    from contextlib import contextmanager
    from fastai_shelve.lmdb_shelf import Shelf
    from fastai_shelve.build import build_shelf
    table, dest, img = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    _txn, done = Shelf.txn, [0]
    @contextmanager
    def txn(self, write=False, **kw):
        with _txn(self, write=write, **kw) as t: yield t
        if write:
            done[0] += 1
            if done[0] == 1:
                Path(f'{dest}.paused').touch()
                while not Path(f'{dest}.go').exists(): time.sleep(0.05)
    Shelf.txn = txn
    print(build_shelf(pd.read_csv(table), dest, img, fn_col='fn', label_col='y', valid_col='is_valid', n_workers=0, commit_every=1,
                      progress=False))
''')

def _start(path, script:str, *args):
    "A child process running `script` with `args`, its output piped."
    return subprocess.Popen([sys.executable, '-c', script, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def _wait_for(f, what:str, timeout:float=120):
    t0 = time.monotonic()
    while not f():
        assert time.monotonic() - t0 < timeout, f'no {what} in {timeout} s'
        time.sleep(0.05)

def test_two_builds_of_one_shelf_run_one_after_the_other(tables):
    "A build started while another writes the shelf waits for it, saying so, then resumes it: the shelf is what the two builds run in turn give."
    path, a, b = tables
    dest = path/'s.shelf'
    first = _start(path, PAUSED, path/'A.csv', dest, path)
    try: _both_builds(path, dest, a, b, first)
    finally: first.kill()  # a failed check leaves no paused build behind (it would hold its shelf)

def _both_builds(path, dest, a, b, first):
    "A's build paused: B's started, then checked while it waits (and killed if a check fails)."
    _wait_for(lambda: (path/'s.shelf.paused').exists() or first.poll() is not None, 'pause')
    assert first.poll() is None, first.communicate()
    second = _start(path, CHILD, path/'B.csv', dest, path, 0, 'after')  # B's build, not killed
    try: _second_waits(path, dest, a, b, first, second)
    finally: second.kill()

def _second_waits(path, dest, a, b, first, second):
    "B waits for A, and the shelf says A runs; A let go, the two builds run in turn."
    from fastai_shelve.info import shelf_info
    from fastai_shelve.build import build_shelf
    said = next((l for l in second.stderr if 'is writing it' in l), '')  # EOF: it ended without waiting
    assert 'another build (or copy) is writing it, in this process or another: waiting for it to end' in said, said
    # While A runs, a reader and `info` say it is running (not stopped) and to wait
    with pytest.raises(ShelfError, match=r'has no record to serve: its build is still running \(a process is writing it now\) and '
                                         r'wrote none yet: wait for it to end'):
        ShelfDataLoaders.from_shelf(dest, bs=4)
    assert shelf_info(dest)['build'].startswith('not finished: its build is still running (a process is writing it now): 12 of')
    assert second.poll() is None  # still waiting: B has written nothing
    with open_shelf(dest) as s: assert sorted(s.table.index) == sorted(a.fn) and len(s) == 0
    (path/'s.shelf.go').touch()
    out_a, err_a = first.communicate(timeout=300); out_b, err_b = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err_a[-2000:] + err_b[-2000:]
    assert 's.shelf: 12 written, 0 already there' in out_a, out_a  # A's report: its table was the shelf's until its end
    # B ran after A, as a rerun: A's records kept, B's two new ones decoded; B's table, B's split, as from_df on the files
    assert _served(dest) == (*_files(path, b), [])
    with open_shelf(dest) as s: assert s.meta.complete and len(s) == 14
    fresh = path/'fresh.shelf'
    build_shelf(a, fresh, path, **KW); build_shelf(b, fresh, path, **KW)  # the same two builds, one after the other
    with open_shelf(dest) as s, open_shelf(fresh) as f:
        assert s.table.equals(f.table) and s.order.equals(f.order) and s.keys() == f.keys()
        assert all((x['image'] == y['image']).all() and (x['labels'] == y['labels']).all() for x, y in zip(s.get_many(s.keys()), f.get_many(f.keys())))
