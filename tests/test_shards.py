"Sharded shelves: a Dask build equals a single-file build; a rerun finishes only the unfinished shard; one logical shelf."
import subprocess, sys
import numpy as np, pytest
from fastai_shelve.store import open_shelf
from fastai_shelve.build import build_shelf
from fastai_shelve.shards import build_sharded
from fastai_shelve.sharded_shelf import ShardedShelf, shard_of
from fastai_shelve.codec import ShelfError
from fastai_shelve.data import ShelfDataLoaders
from conftest import write_bars, kill_at_commit

KW = dict(suff='.jpg', label_col=['a', 'b', 'c'], size=48)

@pytest.fixture
def sharded(tmp_path):
    df = write_bars(tmp_path, 40)
    reports = build_sharded(df, tmp_path/'sh', 3, tmp_path, n_workers=2, **KW)
    build_shelf(df, tmp_path/'one.shelf', path=tmp_path, n_workers=0, progress=False, **KW)
    return tmp_path, df, reports

def test_sharded_equals_single(sharded):
    d, df, reports = sharded
    assert [r['written'] for r in reports] == [sum(shard_of(k, 3) == i for k in df.StudyInstanceUID) for i in range(3)]
    sh, one = open_shelf(d/'sh'), open_shelf(d/'one.shelf')
    assert isinstance(sh, ShardedShelf) and len(sh) == 40 and sh.keys() == one.keys()
    for a, b in zip(sh.get_many(sh.keys()), one.get_many(one.keys())):
        np.testing.assert_array_equal(a['image'], b['image']); np.testing.assert_array_equal(a['labels'], b['labels'])
    ks = list(df.StudyInstanceUID[::-3])
    np.testing.assert_array_equal(sh.get_batch(ks)['image'], one.get_batch(ks)['image'])
    assert sh.meta['label_names'] == ['a', 'b', 'c'] and sh.meta['n_records'] == 40
    assert sh.meta['stats']['mean'] == pytest.approx(one.meta['stats']['mean'])
    assert sh.table.loc['id0007', 'PatientID'] == 'p2' and not sh.verify()
    assert sh.table.index.tolist() == one.table.index.tolist() == df.StudyInstanceUID.tolist()  # the table's row order, not the shards'
    with pytest.raises(KeyError, match='nope') as e: sh.get_many(['id0001', 'nope'])
    assert isinstance(e.value, ShelfError)

KILLED_SHARD = """
import sys, time, pandas as pd
import fastai_shelve.build as b
from fastai_shelve.shards import _build_part
_load = b.BuildSettings.load
b.BuildSettings.load = lambda self, fn: (time.sleep(0.05), _load(self, fn))[1]  # a slower decode, so the kill lands mid-shard
part = pd.read_csv(sys.argv[1])
_build_part(part, sys.argv[2], path=sys.argv[3], fn_col='StudyInstanceUID', suff='.jpg', label_col=['a', 'b', 'c'],
            size=48, commit_every=2)
"""

def test_kill_one_shards_task_then_rerun_finishes_only_it(sharded):
    "SIGKILL the task building shard 1 part-way; the rerun writes only the rest of shard 1."
    d, df, _ = sharded
    part = df[[shard_of(k, 3) == 1 for k in df.StudyInstanceUID]]
    shard1 = d/'sh'/'shard-001.shelf'
    for p in (shard1, d/'sh'/'shard-001.shelf-lock'): p.unlink()
    part.to_csv(d/'part1.csv', index=False); (d/'task.py').write_text(KILLED_SHARD)
    _, committed = kill_at_commit([sys.executable, str(d/'task.py'), str(d/'part1.csv'), str(shard1), str(d)], 3)
    with open_shelf(shard1) as s: n = len(s); assert n == committed and 0 < n < len(part) and not s.verify()
    reports = build_sharded(df, d/'sh', 3, d, n_workers=2, **KW)
    assert [r['written'] for r in reports] == [0, len(part) - n, 0]
    with open_shelf(d/'sh') as sh: assert len(sh) == 40 and not sh.verify()

def test_shards_must_agree(sharded):
    d, df, _ = sharded
    with open_shelf(d/'sh'/'shard-002.shelf', 'w') as s: s.update_meta(build={**s.meta['build'], 'size': 64})
    with pytest.raises(ShelfError, match='shard-002.shelf disagrees'): open_shelf(d/'sh')
    with pytest.raises(ShelfError, match='has 3 shards, not 4'): build_sharded(df, d/'sh', 4, d, **KW)

def test_dataloaders_and_cli_on_shards(sharded):
    d, df, _ = sharded
    dls = ShelfDataLoaders.from_shelf(d/'sh', bs=8, seed=0)
    x, y = dls.one_batch()
    assert x.shape == (8, 1, 48, 48) and y.shape == (8, 3) and dls.train.batch_plans() is not None
    exe = str(__import__('pathlib').Path(sys.executable).with_name('fastai-shelve'))
    r = subprocess.run([exe, 'info', str(d/'sh')], capture_output=True, text=True)
    assert r.returncode == 0 and 'records: 40' in r.stdout and '3 shards' in r.stdout
    r = subprocess.run([exe, 'verify', str(d/'sh')], capture_output=True, text=True)
    assert r.returncode == 0 and '40 of 40 records ok' in r.stdout
    df.to_csv(d/'t.csv', index=False)
    r = subprocess.run([exe, 'build', str(d/'t.csv'), str(d/'sh2'), '--path', str(d), '--suff', '.jpg', '--size', '48',
                        '--label-col', 'a,b,c', '--shards', '2', '--workers', '2'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    with open_shelf(d/'sh2') as s: assert len(s) == 40 and s.n == 2

def test_build_sharded_names_as_build_shelf(tmp_path):
    "As `build_shelf`: `dest` the shards folder, `path` the image root; 0.1.0's spellings fail here, in the caller's process."
    df = write_bars(tmp_path, 12)
    new = build_sharded(df, tmp_path/'new', 2, tmp_path, n_workers=1, **KW)  # positional: dest, n_shards, path
    assert sum(r['written'] for r in new) == 12
    with open_shelf(tmp_path/'new') as a: assert len(a) == 12
    # Refused before the manifest is written or a Dask task starts: an error in a worker would reach no one
    with pytest.raises(TypeError, match=r"build_sharded\(\) got an unexpected keyword argument 'img_path': since 0.2.0, path="):
        build_sharded(df, tmp_path/'old', 2, img_path=tmp_path, n_workers=1, **KW)
    with pytest.raises(TypeError, match="'label_cols': since 0.2.0, label_col="):
        build_sharded(df, tmp_path/'old', 2, tmp_path, n_workers=1, **{**KW, 'label_col': None, 'label_cols': ['a', 'b', 'c']})
    assert not (tmp_path/'old').exists()

def test_build_sharded_without_dask_names_the_extra(tmp_path, monkeypatch):
    "Without dask (a plain `pip install fastai_shelve`), build_sharded says which extra brings it, before anything is written."
    df = write_bars(tmp_path, 4)
    monkeypatch.setitem(sys.modules, 'dask', None)  # what Python does for a module that is not installed: ImportError
    with pytest.raises(ShelfError, match=r"build_sharded needs dask: pip install 'fastai_shelve\[shards\]'"):
        build_sharded(df, tmp_path/'sh', 2, tmp_path, **KW)
    assert not (tmp_path/'sh').exists()

def test_a_second_build_sharded_waits_for_the_first(sharded):
    "A `build_sharded` of a folder another process is building waits for it, saying so; meanwhile the folder says it is being written."
    import time, warnings
    from fastai_shelve.info import shelf_info
    d, df, _ = sharded
    # Another build of the folder: a process holding it as `build_sharded` does, for a second and a half
    other = subprocess.Popen([sys.executable, '-c', "import sys, time; from fastai_shelve.lmdb_env import writing_build\n"
                              f"with writing_build({str(d/'sh')!r}): print(1, flush=True); time.sleep(1.5)"], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == '1'  # it holds the folder now
    with open_shelf(d/'sh') as sh: assert sh.building() is True
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        reports = build_sharded(df, d/'sh', 3, d, n_workers=2, **KW)
    assert time.monotonic() - t0 > 0.5 and other.wait() == 0  # it waited for the other build's end
    assert [str(o.message) for o in w if 'is writing it' in str(o.message)] == [
        f"{d/'sh'}: another build (or copy) is writing it, in this process or another: waiting for it to end"]
    assert sum(r['existing'] for r in reports) == 40 and shelf_info(d/'sh')['build'] == 'finished'  # then ran as a rerun
    with open_shelf(d/'sh') as sh: assert sh.building() is False

def test_shards_learn_the_vocab_as_a_single_shelf(tmp_path):
    "Each shard gets the whole table's vocab for its indices, yet none says it was given: `from_shelf` learns it, as a single shelf."
    df = write_bars(tmp_path, 16)
    df['y'], df['is_valid'] = ['a', 'b'] * 7 + ['rare', 'a'], [i >= 12 for i in range(16)]  # 'rare': a validation row only
    kw = dict(suff='.jpg', label_col='y', size=32, valid_col='is_valid')
    build_sharded(df, tmp_path/'sh', 2, tmp_path, n_workers=2, **kw)
    build_shelf(df, tmp_path/'one.shelf', path=tmp_path, n_workers=0, progress=False, **kw)
    for p in (tmp_path/'sh', tmp_path/'one.shelf'):
        with open_shelf(p) as s: assert not s.meta['vocab_given']
        assert list(ShelfDataLoaders.from_shelf(p, bs=4, device='cpu').vocab) == ['a', 'b']

def test_a_refused_rerun_names_the_folder_and_advice_for_it(sharded):
    "A rerun a shard refuses (another compression) names the folder the user built, and advises converting that, not a shard."
    d, df, _ = sharded
    with pytest.raises(ShelfError) as e: build_sharded(df, d/'sh', 3, d, n_workers=0, compression='zstd', **KW)
    msg = str(e.value)
    assert msg.startswith(f"{d/'sh'}: ") and 'was built with compression=None' in msg, msg
    assert f"fastai-shelve convert {d/'sh'} NEW" in msg and 'shard-000.shelf NEW' not in msg, msg
