"""Trying to break it: kills during build and convert, concurrent readers and writers, a full disk.
Quick versions run by default; the full ones are marked `slow` (`pytest -m slow`)."""
import sys, time, shelve, subprocess, textwrap, random, multiprocessing as mp
import numpy as np, pytest
from fastai_shelve.store import open_shelf
from fastai_shelve.build import build_shelf
from fastai_shelve.codec import ShelfError
from conftest import write_bars, kill_when

BUILD = textwrap.dedent('''
    import sys, pandas as pd
    from fastai_shelve.build import build_shelf
    build_shelf(pd.read_csv(sys.argv[1]), sys.argv[2], img_path=sys.argv[3], suffix='.png', label_cols=['a', 'b', 'c'],
                size=96, n_workers=int(sys.argv[4]), commit_every=7, progress=False)
''')

@pytest.fixture(scope='module')
def kill_corpus(tmp_path_factory):
    "300 real PNG files, their CSV, a build script, and a clean build to compare with."
    d = tmp_path_factory.mktemp('kill')
    df = write_bars(d, 300, ext='.png'); df.to_csv(d/'train.csv', index=False)
    (d/'build.py').write_text(BUILD)
    subprocess.run([sys.executable, str(d/'build.py'), str(d/'train.csv'), str(d/'clean.shelf'), str(d), '2'], check=True)
    return d, df

KILLS = [pytest.param(i, marks=pytest.mark.slow) if i >= 3 else i for i in range(20)]

@pytest.mark.parametrize('i', KILLS)
def test_kill_during_build_then_resume(kill_corpus, tmp_path, i):
    "SIGKILL a build at a random point: only whole records, each equal to a clean build's; resuming completes it."
    d, df = kill_corpus
    rng = random.Random(i)
    shelf = tmp_path/'s.shelf'
    cmd = [sys.executable, str(d/'build.py'), str(d/'train.csv'), str(shelf), str(d), str(rng.choice([0, 2]))]
    assert kill_when(cmd, shelf, rng.randint(1, 250), rng.uniform(0, 0.03)), 'the build ended before the kill'
    with open_shelf(shelf) as s, open_shelf(d/'clean.shelf') as clean:
        n = len(s)
        assert 0 < n <= 300 and not s.verify()  # no partial or corrupt record (the kill may follow the last commit)
        for k,r in zip(s.keys(), s.get_many(s.keys())): np.testing.assert_array_equal(r['image'], clean[k]['image'])
    r = build_shelf(df, shelf, img_path=d, suffix='.png', label_cols=['a', 'b', 'c'], size=96, n_workers=0, progress=False)
    print(f'build kill {i}: {n} whole records survived, {r.written} resumed')
    assert (r.existing, r.written) == (n, 300 - n)
    with open_shelf(shelf) as s: assert s.keys() == sorted(df.StudyInstanceUID)

CONVERT = textwrap.dedent('''
    import sys
    from fastai_shelve.build import convert_shelf
    convert_shelf(sys.argv[1], sys.argv[2], allow_pickle=True, chunk=16, progress=False)
''')

@pytest.mark.parametrize('i', [pytest.param(i, marks=pytest.mark.slow) if i >= 2 else i for i in range(6)])
def test_kill_during_convert_then_resume(tmp_path, i):
    from fastai_shelve.build import convert_shelf
    rng = np.random.default_rng(i)
    recs = {f'k{j:04d}': {'image': rng.integers(0, 255, (128, 128), dtype=np.uint8), 'labels': np.ones((1, 11), np.int8)} for j in range(600)}
    with shelve.open(str(tmp_path/'old.db')) as db:
        for k,v in recs.items(): db[k] = v
    (tmp_path/'convert.py').write_text(CONVERT)
    cmd = [sys.executable, str(tmp_path/'convert.py'), str(tmp_path/'old.db'), str(tmp_path/'new.shelf')]
    assert kill_when(cmd, tmp_path/'new.shelf', int(rng.integers(1, 550)), float(rng.uniform(0, 0.01)))
    with open_shelf(tmp_path/'new.shelf') as s: n = len(s); assert n < 600 and not s.verify()
    assert convert_shelf(tmp_path/'old.db', tmp_path/'new.shelf', allow_pickle=True, progress=False) == 600 - n
    with open_shelf(tmp_path/'new.shelf') as s:
        assert s.keys() == sorted(recs)
        for k in list(recs)[::50]: np.testing.assert_array_equal(s[k]['image'], recs[k]['image'])

# Concurrency: records whose every element is their generation number, so a torn or mixed read shows.
def _rec(gen): return {'x': np.full(20000, gen, np.int32), 'gen': gen}

def _writer(path, seconds, q):
    s = open_shelf(path, 'c'); rng = np.random.default_rng(0); commits = 0; gen = 1; t0 = time.time()
    while time.time() - t0 < seconds:
        gen += 1
        upd = {f'k{j:03d}': _rec(gen) for j in rng.choice(200, 10, replace=False)}
        upd[f'new{gen:06d}'] = _rec(gen)
        s.put_many(upd); commits += 1
    s.close(); q.put(('writer', commits))

def _reader(path, seconds, q, seed):
    s = open_shelf(path); rng = np.random.default_rng(seed); reads = torn = 0; t0 = time.time()
    while time.time() - t0 < seconds:
        for r in s.get_many([f'k{j:03d}' for j in rng.choice(200, 32)]):
            reads += 1
            if not (r['x'].min() == r['x'].max() == r['gen']): torn += 1
    s.close(); q.put(('reader', reads, torn))

@pytest.mark.parametrize('seconds', [3, pytest.param(20, marks=pytest.mark.slow)])
def test_readers_and_writer_concurrently(tmp_path, seconds):
    path = tmp_path/'c.shelf'
    with open_shelf(path, 'c') as s: s.put_many({f'k{j:03d}': _rec(1) for j in range(200)})
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    ps = [ctx.Process(target=_writer, args=(path, seconds, q))] + [ctx.Process(target=_reader, args=(path, seconds, q, i)) for i in range(4)]
    for p in ps: p.start()
    res = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps: p.join(30)
    commits = sum(r[1] for r in res if r[0] == 'writer')
    reads, torn = sum(r[1] for r in res if r[0] == 'reader'), sum(r[2] for r in res if r[0] == 'reader')
    print(f'{reads} reads, {torn} torn, {commits} commits in {seconds}s')
    assert torn == 0 and reads > 1000 and commits > 10  # neither side starved the other
    with open_shelf(path) as s: assert not s.verify() and len(s) == 200 + commits

def _append(path, prefix, q):
    s = open_shelf(path, 'c')
    for i in range(0, 100, 5): s.put_many({f'{prefix}{j:03d}': _rec(j) for j in range(i, i + 5)})
    s.close(); q.put(prefix)

def test_two_writers_are_serialised(tmp_path):
    path = tmp_path/'w.shelf'
    open_shelf(path, 'c').close()
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    ps = [ctx.Process(target=_append, args=(path, p, q)) for p in 'ab']
    for p in ps: p.start()
    assert sorted(q.get(timeout=60) for _ in ps) == ['a', 'b']
    for p in ps: p.join(30)
    with open_shelf(path) as s:
        assert len(s) == 200 and not s.verify()
        assert all(r['x'][0] == r['gen'] for r in s.get_many(s.keys()))

def _tmpfs(path, size):
    path.mkdir(exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True)
    return r.returncode == 0

def test_disk_full_stops_cleanly_and_resumes(tmp_path):
    df = write_bars(tmp_path, 60)
    small = tmp_path/'small'
    if not _tmpfs(small, '1m'): pytest.skip('cannot mount a size-limited tmpfs here (needs root)')
    try:
        with pytest.raises(ShelfError, match='write failed|No space|space'):
            build_shelf(df, small/'s.shelf', img_path=tmp_path, suffix='.jpg', label_cols=['a', 'b', 'c'], size=(256, 256),
                        n_workers=0, commit_every=4, progress=False)
        with open_shelf(small/'s.shelf') as s:
            n = len(s); assert not s.verify()
        assert 0 < n < 60
        subprocess.run(['mount', '-o', 'remount,size=64m', str(small)], check=True)  # space freed
        r = build_shelf(df, small/'s.shelf', img_path=tmp_path, suffix='.jpg', label_cols=['a', 'b', 'c'], size=(256, 256),
                        n_workers=0, progress=False)
        assert r.existing == n and r.written == 60 - n
        with open_shelf(small/'s.shelf') as s: assert len(s) == 60 and not s.verify()
    finally: subprocess.run(['umount', str(small)], capture_output=True)
