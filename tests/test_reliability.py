"""Trying to break it: kills during build and convert, concurrent readers and writers, a full disk.
Quick versions run by default; the full ones are marked `slow` (`pytest -m slow`)."""
import os, sys, json, time, shelve, subprocess, textwrap, random, queue, multiprocessing as mp
import numpy as np, pytest
from pathlib import Path
from fastai_shelve.store import open_shelf
from fastai_shelve.build import build_shelf
from fastai_shelve.codec import ShelfError
from conftest import write_bars, kill_at_commit

BUILD = textwrap.dedent('''
    import sys, pandas as pd
    from fastai_shelve.build import build_shelf
    build_shelf(pd.read_csv(sys.argv[1]), sys.argv[2], path=sys.argv[3], suff='.png', label_col=['a', 'b', 'c'],
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
    "SIGKILL a build at a commit, open or just done: the committed records, each equal to a clean build's; resuming completes it."
    d, df = kill_corpus
    rng = random.Random(i)
    shelf = tmp_path/'s.shelf'
    cmd = [sys.executable, str(d/'build.py'), str(d/'train.csv'), str(shelf), str(d), str(rng.choice([0, 2]))]
    at = kill_at_commit(cmd, rng.randint(8, 250), during=i % 2 == 1)
    with open_shelf(shelf) as s, open_shelf(d/'clean.shelf') as clean:
        n = len(s)
        assert n == at[1] and 0 < n < 300 and not s.verify(), at  # the committed records, none of an open transaction
        for k,r in zip(s.keys(), s.get_many(s.keys())): np.testing.assert_array_equal(r['image'], clean[k]['image'])
    r = build_shelf(df, shelf, path=d, suff='.png', label_col=['a', 'b', 'c'], size=96, n_workers=0, progress=False)
    print(f'build kill {i}: {n} whole records survived, {r.written} resumed')
    assert (r.existing, r.written) == (n, 300 - n)
    with open_shelf(shelf) as s: assert s.keys() == sorted(df.StudyInstanceUID)

BUILD_ZSTD = BUILD.replace("commit_every=7, progress=False)", "commit_every=7, progress=False, compression='zstd')")

@pytest.mark.parametrize('i', [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kill_during_compressed_build_then_resume(kill_corpus, tmp_path, i):
    "SIGKILL a zstd build part-way: its whole records decode to a clean raw build's pixels; resuming completes it, compressed."
    d, df = kill_corpus
    assert "compression='zstd'" in BUILD_ZSTD
    (tmp_path/'build.py').write_text(BUILD_ZSTD)
    rng = random.Random(100 + i)
    shelf = tmp_path/'z.shelf'
    cmd = [sys.executable, str(tmp_path/'build.py'), str(d/'train.csv'), str(shelf), str(d), str(rng.choice([0, 2]))]
    at = kill_at_commit(cmd, rng.randint(8, 250), during=i % 2 == 0)
    with open_shelf(shelf) as s, open_shelf(d/'clean.shelf') as clean:
        n = len(s)
        assert n == at[1] and 0 < n < 300 and not s.verify(), at
        np.testing.assert_array_equal(s.get_batch(s.keys())['image'], clean.get_batch(s.keys())['image'])
    r = build_shelf(df, shelf, path=d, suff='.png', label_col=['a', 'b', 'c'], size=96, n_workers=0, progress=False,
                    compression='zstd')
    assert (r.existing, r.written) == (n, 300 - n)
    with open_shelf(shelf) as s, open_shelf(d/'clean.shelf') as clean:
        assert s.keys() == clean.keys() and not s.verify() and s.meta['compression'] == 'zstd'
        np.testing.assert_array_equal(s.get_batch(s.keys())['image'], clean.get_batch(s.keys())['image'])
    assert shelf.stat().st_size < (d/'clean.shelf').stat().st_size

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
    at = kill_at_commit(cmd, int(rng.integers(17, 550)), during=i % 2 == 1)
    with open_shelf(tmp_path/'new.shelf') as s: n = len(s); assert n == at[1] and 0 < n < 600 and not s.verify(), at
    assert convert_shelf(tmp_path/'old.db', tmp_path/'new.shelf', allow_pickle=True, progress=False) == 600 - n
    with open_shelf(tmp_path/'new.shelf') as s:
        assert s.keys() == sorted(recs)
        for k in list(recs)[::50]: np.testing.assert_array_equal(s[k]['image'], recs[k]['image'])

# Concurrency: records whose every element is their generation number, so a torn or mixed read shows.
def _rec(gen): return {'x': np.full(20000, gen, np.int32), 'gen': gen}

def _writer(path, n_commits, reads, done, q):
    "`n_commits` commits, each waiting for a reader to finish a batch since the last: a blocked reader hangs it."
    s = open_shelf(path, 'c'); rng = np.random.default_rng(0)
    for gen in range(2, n_commits + 2):
        upd = {f'k{j:03d}': _rec(gen) for j in rng.choice(200, 10, replace=False)}
        upd[f'new{gen:06d}'] = _rec(gen)
        before = reads.value
        s.put_many(upd)
        while reads.value == before: time.sleep(0.001)
    s.close(); done.set(); q.put(('writer', n_commits))

def _reader(path, reads, done, q, seed):
    "Batches of 32 records until the writer is done: how many records, and how many torn (mixed generations)."
    s = open_shelf(path); rng = np.random.default_rng(seed); n = torn = 0
    while not done.is_set():
        for r in s.get_many([f'k{j:03d}' for j in rng.choice(200, 32)]):
            n += 1
            if not (r['x'].min() == r['x'].max() == r['gen']): torn += 1
        with reads.get_lock(): reads.value += 1
    s.close(); q.put(('reader', n, torn))

@pytest.mark.parametrize('n_commits', [50, pytest.param(1000, marks=pytest.mark.slow)])
def test_readers_and_writer_concurrently(tmp_path, n_commits):
    "One writer, four readers at once: no torn record, and neither side starves the other (each waits on the other's progress)."
    path = tmp_path/'c.shelf'
    with open_shelf(path, 'c') as s: s.put_many({f'k{j:03d}': _rec(1) for j in range(200)})
    ctx = mp.get_context('spawn'); q, reads, done = ctx.Queue(), ctx.Value('l', 0), ctx.Event()
    ps = [ctx.Process(target=_writer, args=(path, n_commits, reads, done, q))]
    ps += [ctx.Process(target=_reader, args=(path, reads, done, q, i)) for i in range(4)]
    for p in ps: p.start()
    try: res = [q.get(timeout=600) for _ in ps]
    except queue.Empty: res = None
    for p in ps:
        if res is None: p.kill()
        p.join(30)
    assert res is not None, 'the writer or a reader never finished: one side starved the other'
    commits = sum(r[1] for r in res if r[0] == 'writer')
    reads, torn = sum(r[1] for r in res if r[0] == 'reader'), sum(r[2] for r in res if r[0] == 'reader')
    print(f'{reads} reads, {torn} torn, {commits} commits')
    assert torn == 0 and commits == n_commits and reads >= 32 * n_commits  # a batch read after every commit
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
    assert sorted(q.get(timeout=600) for _ in ps) == ['a', 'b']  # a hang guard: spawned children import the test module
    for p in ps: p.join(60)
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
            build_shelf(df, small/'s.shelf', path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], size=(256, 256),
                        n_workers=0, commit_every=4, progress=False)
        with open_shelf(small/'s.shelf') as s:
            n = len(s); assert not s.verify()
        assert 0 < n < 60
        subprocess.run(['mount', '-o', 'remount,size=64m', str(small)], check=True)  # space freed
        r = build_shelf(df, small/'s.shelf', path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], size=(256, 256),
                        n_workers=0, progress=False)
        assert r.existing == n and r.written == 60 - n
        with open_shelf(small/'s.shelf') as s: assert len(s) == 60 and not s.verify()
    finally: subprocess.run(['umount', str(small)], capture_output=True)

# Damaged files: LMDB trusts its pages and aborts on a broken one; verify and info must say "damaged", never die.
def _sweep_shelf(path, n_small, n_big):
    "A shelf of small in-page records and a few big ones in overflow pages; its records."
    rng = np.random.default_rng(0)
    recs = {f's{i:03d}': {'image': rng.integers(0, 255, (20, 25), dtype=np.uint8), 'labels': np.array([i % 2, 1], np.int8)} for i in range(n_small)}
    recs.update({f'b{i:03d}': {'image': rng.integers(0, 255, (100, 120), dtype=np.uint8), 'labels': np.array([1, 0], np.int8)} for i in range(n_big)})
    with open_shelf(path, 'n') as s: s.put_many(recs); s.update_meta(label_kind='multi', label_names=['a', 'b'])
    Path(f'{path}-lock').unlink()
    return recs

# The CLI's `main` on each damaged copy in turn, in one child process (the CLI's imports cost a second a process): the
# exit code, and what reached file descriptors 1 and 2 (C libraries' writes as well as Python's), as a process of its own
# would show them. A progress line before each run names the copy a signal death or a hang happened on.
SWEEP_CLI = textwrap.dedent('''
    import os, sys, json, warnings, traceback
    todo, prog, out = json.load(open(sys.argv[1])), open(sys.argv[2], 'a'), open(sys.argv[3], 'a')
    def run(cmd, path, o, e):
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(o, 'w') as fo, open(e, 'w') as fe: os.dup2(fo.fileno(), 1); os.dup2(fe.fileno(), 2)
        try:
            with warnings.catch_warnings():  # each run warns afresh, as a new process would
                from fastai_shelve.cli import main  # in the first run's capture: what importing prints counts too
                try: main([cmd, path]); return 0
                except SystemExit as x:
                    if isinstance(x.code, str): print(x.code, file=sys.stderr)
                    return x.code if isinstance(x.code, int) else int(x.code is not None)
                except BaseException: traceback.print_exc(); return 1  # what an uncaught exception does to a process
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            for fd, old in zip((1, 2), saved): os.dup2(old, fd); os.close(old)
    for page, cmd, path in todo:
        print(page, cmd, file=prog, flush=True)
        code = run(cmd, path, f'{path}.{cmd}.out', f'{path}.{cmd}.err')
        print(json.dumps(dict(page=page, cmd=cmd, code=code, stderr=open(f'{path}.{cmd}.err').read())), file=out, flush=True)
''')

def _zeroed_page_sweep(tmp_path, n_small, n_big, cmds):
    "Zero each 4 KiB page in turn; run the CLI's `cmds` on it. Outcome counts; asserts no signal death, no damage passing."
    recs = _sweep_shelf(tmp_path/'orig.shelf', n_small, n_big)
    data = (tmp_path/'orig.shelf').read_bytes()
    counts = {'tried': 0, 'clean error': 0, 'passes, data intact': 0, 'wrong data silently': 0, 'signal death': 0, 'hang': 0}
    todo = []
    for page in range(len(data) // 4096):
        f = tmp_path/f'p{page}.shelf'
        b = bytearray(data); b[page*4096:(page+1)*4096] = bytes(4096); f.write_bytes(bytes(b))
        todo += [(page, c, str(f)) for c in cmds]
    prog, out, results = tmp_path/'progress.txt', tmp_path/'results.jsonl', {}
    (tmp_path/'sweep.py').write_text(SWEEP_CLI)
    while todo:  # a child for what is left: after a hang, the next one goes on from the copy after it
        (tmp_path/'todo.json').write_text(json.dumps(todo))
        try:
            r = subprocess.run([sys.executable, str(tmp_path/'sweep.py'), str(tmp_path/'todo.json'), str(prog), str(out)],
                               capture_output=True, text=True, timeout=120 + 10*len(todo))
            hang = False
        except subprocess.TimeoutExpired: hang = True
        for l in out.read_text().splitlines() if out.exists() else []:
            d = json.loads(l); results[d['page'], d['cmd']] = d
        stopped = [(int(p), c) for p, c in (l.split() for l in prog.read_text().splitlines())][-1:]
        if not hang:
            assert r.returncode >= 0, f"page {stopped[0][0]}: {stopped[0][1]} died by signal {-r.returncode}"
            assert r.returncode == 0, r.stderr[-3000:]
        elif stopped and stopped[0] not in results: results[stopped[0]] = dict(page=stopped[0][0], cmd=stopped[0][1], hang=True)
        else: raise AssertionError('the sweep hung between two runs')
        todo = [t for t in todo if t[:2] not in results]
    for (page, c), d in sorted(results.items()):
        counts['tried'] += 1
        if d.get('hang'): counts['hang'] += 1; continue
        assert 'Traceback' not in d['stderr'] and len(d['stderr'].strip().splitlines()) <= 1, (page, c, d['stderr'][-500:])
        if d['code']: counts['clean error'] += 1; continue
        if c != 'verify': counts['info ran (it checks structure, not records)'] = counts.get('info ran (it checks structure, not records)', 0) + 1; continue
        with open_shelf(tmp_path/f'p{page}.shelf', check=True) as s:  # verify passed: then every record must be the original
            got = dict(zip(s.keys(), s.get_many(s.keys())))
        same = set(got) == set(recs) and all(np.array_equal(got[k]['image'], recs[k]['image']) for k in recs)
        counts['passes, data intact' if same else 'wrong data silently'] += 1
    print(counts)
    assert counts['wrong data silently'] == counts['hang'] == 0 and counts['clean error'] > 0
    return counts

def test_zeroed_page_sweep_quick(tmp_path): _zeroed_page_sweep(tmp_path, 12, 1, ['verify'])

@pytest.mark.slow
def test_zeroed_page_sweep_full(tmp_path): _zeroed_page_sweep(tmp_path, 60, 4, ['verify', 'info'])

# A full disk: LMDB maps its lock file, and a mapped page the file system cannot back is a SIGBUS, not an error.
FULL_OPEN = textwrap.dedent('''
    import sys
    from fastai_shelve.store import open_shelf
    from fastai_shelve.codec import ShelfError
    try:
        with open_shelf(sys.argv[1], sys.argv[2], **({'lock': False} if sys.argv[3:] == ['nolock'] else {})) as s: print('opened', len(s))
    except ShelfError as e: print('ShelfError:', e); sys.exit(3)
''')

def test_full_disk_open_and_create_are_errors_not_signals(tmp_path):
    small = tmp_path/'small'
    if not _tmpfs(small, '512k'): pytest.skip('cannot mount a size-limited tmpfs here (needs root)')
    try:
        recs = _sweep_shelf(tmp_path/'s.shelf', 20, 0)
        (small/'s.shelf').write_bytes((tmp_path/'s.shelf').read_bytes())  # uploaded without its lock file
        (tmp_path/'open.py').write_text(FULL_OPEN)
        import os
        fd = os.open(small/'filler', os.O_WRONLY | os.O_CREAT)  # fill the disk
        try:
            while True: os.write(fd, bytes(4096))
        except OSError: pass
        finally: os.close(fd)
        run = lambda *a: subprocess.run([sys.executable, str(tmp_path/'open.py'), *map(str, a)], capture_output=True, text=True, timeout=120)
        for args in ((small/'s.shelf', 'r'), (small/'new.shelf', 'c')):
            r = run(*args)
            assert r.returncode == 3 and 'no space left on device' in r.stdout, (args, r.returncode, r.stdout, r.stderr[-500:])
        r = run(small/'s.shelf', 'r', 'nolock')  # what the reader's error advises: it reads without a lock file
        assert r.returncode == 0 and f'opened {len(recs)}' in r.stdout, (r.returncode, r.stdout, r.stderr[-500:])
        (small/'s.shelf-lock').write_bytes(b'')  # a 0-byte lock file left behind: the same clean error, not a SIGBUS
        r = run(small/'s.shelf', 'r')
        assert r.returncode == 3 and 'no space left on device' in r.stdout and 'lock=False' in r.stdout, (r.returncode, r.stdout)
        (small/'filler').unlink()  # space freed: it opens
        r = run(small/'s.shelf', 'r')
        assert r.returncode == 0 and f'opened {len(recs)}' in r.stdout, r.stderr[-500:]
    finally: subprocess.run(['umount', str(small)], capture_output=True)

def test_reader_that_cannot_lock_is_refused_unless_it_says_so(tmp_path):
    "A writable shared folder whose lock file this process cannot write: an error, never silently unlocked reads."
    shelf = tmp_path/'s.shelf'
    _sweep_shelf(shelf, 5, 0)
    with open_shelf(shelf) as s: len(s)  # its lock file now exists
    lock = f'{shelf}-lock'
    # The lock file alone on a read-only bind mount: the folder stays writable (statvfs says so), the lock file does not.
    if subprocess.run(['mount', '--bind', lock, lock], capture_output=True).returncode: pytest.skip('cannot bind-mount here')
    try:
        if subprocess.run(['mount', '-o', 'remount,ro,bind', lock], capture_output=True).returncode: pytest.skip('cannot remount read-only')
        code = ("import sys\nfrom fastai_shelve.store import open_shelf\nfrom fastai_shelve.codec import ShelfError\n"
                "try:\n    s = open_shelf(sys.argv[1], lock=False if sys.argv[2] == 'no' else None); print('read', len(s))\n"
                "except ShelfError as e: print('refused:', e)\n")
        r = subprocess.run([sys.executable, '-c', code, str(shelf), 'default'], capture_output=True, text=True, timeout=120)
        assert 'refused:' in r.stdout and 'lock file' in r.stdout and 'lock=False' in r.stdout, r.stdout + r.stderr[-800:]
        r = subprocess.run([sys.executable, '-c', code, str(shelf), 'no'], capture_output=True, text=True, timeout=120)
        assert 'read 5' in r.stdout, r.stdout + r.stderr[-800:]
    finally: subprocess.run(['umount', lock], capture_output=True)

def test_a_lock_file_planted_as_a_link_writes_nothing_through_it(tmp_path):
    "A lock file that is a symbolic link (a shared folder's trap) is refused by every open, naming it; the file it names is untouched."
    shelf = tmp_path/'s.shelf'
    _sweep_shelf(shelf, 5, 0)
    victim = tmp_path/'notes.txt'; victim.write_text('mine')
    Path(f'{shelf}-lock').unlink(missing_ok=True); Path(f'{shelf}-lock').symlink_to(victim)
    with pytest.raises(ShelfError, match=r's\.shelf-lock is a symbolic link \(to .*notes\.txt\): LMDB would write through it'): open_shelf(shelf)
    with pytest.raises(ShelfError, match='is a symbolic link'): build_shelf([], shelf, progress=False)
    r = subprocess.run([sys.executable, '-m', 'fastai_shelve.cli', 'info', str(shelf)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'is a symbolic link' in r.stderr, r.stderr
    assert victim.read_text() == 'mine'

def _lmdb_locks(path) -> list:
    "This process's POSIX locks on `path`'s LMDB lock file, as /proc/locks lists them: [(kind, first byte)]."
    ino, pid = os.stat(f'{path}-lock').st_ino, str(os.getpid())
    rows = [l.split() for l in open('/proc/locks') if f':{ino} ' in l and '->' not in l]
    return sorted((r[3], r[-2]) for r in rows if r[4] == pid)

@pytest.mark.skipif(not os.path.exists('/proc/locks'), reason='reads the kernel\'s lock list (Linux)')
def test_a_shelf_open_here_keeps_lmdbs_locks(tmp_path):
    "keys(), its structure walk and a second handle on the file leave this process's LMDB locks in place."
    # Closing any descriptor of a file drops the process's POSIX locks on it. Without LMDB's, the next process to open the
    # shelf thinks itself alone and resets LMDB's lock table: a writer here then commits over its last commit (records
    # lost, which test_two_builds_with_other_settings_started_together saw once in ~30 runs).
    p = tmp_path/'s.shelf'
    rec = lambda i: {'image': np.full((8, 8), i, np.uint8)}
    with open_shelf(p, 'c') as s:
        s.put_many([(f'k{i}', rec(i)) for i in range(3)])
        held = _lmdb_locks(p)
        assert ('READ', '0') in held, held  # LMDB's own: "this file is open here"
        assert s.keys() == ['k0', 'k1', 'k2']  # walks the file's structure in a child first
        with open_shelf(p) as r: assert len(r) == 3  # a reader of the same file in this process
        s.put_many([('k3', rec(3))])  # a new version of the file: walked again
        assert len(s.keys()) == 4
        assert _lmdb_locks(p) == held

HOLD_OPEN = textwrap.dedent('''
    import sys
    from fastai_shelve.store import open_shelf
    with open_shelf(sys.argv[1]) as s:
        print(len(s), flush=True); sys.stdin.readline()  # open until told
''')

def test_mode_n_refuses_a_shelf_in_use(tmp_path):
    "Replacing a shelf that this or another process has open is refused before anything is deleted; closed, it is replaced."
    # Deleted under them, a build in another process would go on writing into the deleted file and report success
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as s: s.put_many([('old', {'image': np.zeros(4, np.uint8)})])
    with open_shelf(p) as r:
        with pytest.raises(ShelfError, match='is open'): open_shelf(p, 'n')
        assert r.keys() == ['old']
    q = subprocess.Popen([sys.executable, '-c', HOLD_OPEN, str(p)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert q.stdout.readline().strip() == '1'
        with pytest.raises(ShelfError, match='is open'): open_shelf(p, 'n')
    finally: q.communicate('\n', timeout=60)
    with open_shelf(p) as s: assert s.keys() == ['old']
    with open_shelf(p, 'n') as w: w.put_many([('new', {'image': np.ones(4, np.uint8)})])  # nobody has it open: replaced
    with open_shelf(p) as s: assert s.keys() == ['new']

TWO_BUILDS = textwrap.dedent('''
    import sys, pandas as pd
    from fastai_shelve.build import build_shelf
    from fastai_shelve.codec import ShelfError
    try: build_shelf(pd.read_csv(sys.argv[1]), sys.argv[2], path=sys.argv[3], suff='.png', label_col=['a', 'b', 'c'],
                     size=int(sys.argv[4]), n_workers=0, commit_every=3, progress=False)
    except ShelfError as e: print('refused:', e); sys.exit(3)
''')

@pytest.mark.parametrize('i', [0, 1, 2] + [pytest.param(i, marks=pytest.mark.slow) for i in range(3, 20)])
def test_two_builds_with_other_settings_started_together(kill_corpus, tmp_path, i):
    "Two builds of one shelf at sizes 32 and 48, started at once: one is refused; every record has the size the metadata says."
    d, _ = kill_corpus
    (tmp_path/'b.py').write_text(TWO_BUILDS)
    small = d/'train.csv'
    ps = [subprocess.Popen([sys.executable, str(tmp_path/'b.py'), str(small), str(tmp_path/'s.shelf'), str(d), str(size)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for size in (32, 48)[::(-1 if i % 2 else 1)]]
    outs = [p.communicate(timeout=300) for p in ps]
    codes = sorted(p.returncode for p in ps)
    assert codes == [0, 3], (codes, [o[1][-500:] for o in outs])
    assert any('other settings' in o[0] for o in outs)
    with open_shelf(tmp_path/'s.shelf') as s:
        size = s.meta['build']['size']
        assert len(s) == 300 and {r['image'].shape for r in s.get_many(s.keys())} == {(size, size)}

KILL_WORKERS = textwrap.dedent('''
    import os, sys, signal, pandas as pd
    import fastai_shelve.build as b
    def busy(self, fn):
        "A decode that says it started, on the build's stdout (the workers share it), and never ends: the kill finds it busy."
        # One write of the whole line, atomic on a pipe: `print` makes a write per piece where PYTHONUNBUFFERED is set (CI),
        # and two workers' pieces interleaved into 'busybusy  12 34' (a line the test never read as two workers).
        os.write(1, f'busy {os.getpid()}\\n'.encode())
        while True: signal.pause()
    b.BuildSettings.load = busy
    b.build_shelf(pd.read_csv(sys.argv[1]), sys.argv[2], path=sys.argv[3], suff='.png', label_col=['a', 'b', 'c'],
                  size=32, n_workers=2, progress=False)
''')

def _alive(pid) -> bool:
    from pathlib import Path as P
    try: return ') Z' not in (P('/proc')/str(pid)/'stat').read_text()  # a zombie has died
    except OSError: return False

@pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='waits on the workers with pidfds (Linux 5.3)')
def test_kill_9_of_a_build_leaves_no_workers(kill_corpus, tmp_path):
    "SIGKILL a build while both its decode workers are busy (each says so): both end with it, seen as their pidfds' events."
    import select
    d, _ = kill_corpus
    (tmp_path/'k.py').write_text(KILL_WORKERS)
    p = subprocess.Popen([sys.executable, str(tmp_path/'k.py'), str(d/'train.csv'), str(tmp_path/'s.shelf'), str(d)],
                         stdout=subprocess.PIPE, bufsize=0)  # unbuffered: a line read leaves the next in the pipe, for select
    workers, fds = set(), {}
    try:
        while len(workers) < 2:  # the workers' own words, not a count of children after a delay; 120 s: a hang guard
            assert select.select([p.stdout], [], [], 120)[0], 'the build never started two decodes'
            line = p.stdout.readline().decode().split()
            assert line, f'the build ended (exit code {p.wait()}) before two workers were busy'
            if line[0] == 'busy': workers.add(int(line[1]))
        fds = {os.pidfd_open(w): w for w in workers}  # before the kill: a pid the system reuses later is not ours
        p.kill(); p.wait()
        left, t0 = dict(fds), time.monotonic()
        while left and time.monotonic() - t0 < 600:  # each pidfd turns readable when its process ends
            for fd in select.select(list(left), [], [], 600)[0]: left.pop(fd)
        assert not left and not [w for w in workers if _alive(w)], 'decode workers outlived their killed build'
    finally:
        if p.poll() is None: p.kill(); p.wait()
        for w in workers:
            if _alive(w): os.kill(w, 9)  # only if the test failed: the workers it started, by their pids
        for fd in fds: os.close(fd)
        p.stdout.close()

GROW = textwrap.dedent('''
    import sys, numpy as np
    from fastai_shelve.lmdb_shelf import Shelf
    with Shelf(sys.argv[1], 'w', map_size=1 << 20) as s:
        s.put_many({f'big{i}': {'x': np.full(400_000, i, np.uint8)} for i in range(20)})  # 8 MB through a 1 MB map
''')

def test_a_long_lived_reader_survives_a_writer_growing_the_map(tmp_path):
    "MDB_MAP_RESIZED: another process grew the file past this reader's map; the reader adopts the new size and carries on."
    from fastai_shelve.lmdb_shelf import Shelf
    with Shelf(tmp_path/'s.shelf', 'c', map_size=1 << 20) as s: s['a'] = {'x': np.arange(10)}
    reader = Shelf(tmp_path/'s.shelf', map_size=1 << 20)
    assert len(reader) == 1
    (tmp_path/'grow.py').write_text(GROW)
    subprocess.run([sys.executable, str(tmp_path/'grow.py'), str(tmp_path/'s.shelf')], check=True, timeout=120)
    assert len(reader) == 21 and reader['big7']['x'][0] == 7 and reader.get_batch(['big3', 'big19'])['x'][:, 0].tolist() == [3, 19]
    reader.close()

def test_small_things(tmp_path):
    "Empty and over-long keys, a manifest pointing outside its folder, creating a shelf where nothing can be written."
    import json, os
    from fastai_shelve.interface import ReadOnlyError
    df = write_bars(tmp_path, 6)
    df.loc[2, 'StudyInstanceUID'] = 'x' * 600
    r = build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], size=32, n_workers=0, progress=False)
    assert r.written == 5 and len(r.bad) == 1 and '511 bytes' in r.bad[0][2]  # one bad id, the build goes on
    with open_shelf(tmp_path/'s.shelf') as s: assert '' not in s and 'x' * 600 not in s and len(s) == 5
    (tmp_path/'sh').mkdir()
    for names in (['../s.shelf'], ['/etc/passwd'], ['..']):
        (tmp_path/'sh'/'manifest.json').write_text(json.dumps(dict(format='fastai_shelve shards', n_shards=1, shards=names)))
        with pytest.raises(ShelfError, match='plain file names inside the folder'): open_shelf(tmp_path/'sh')
    ro = tmp_path/'ro'; ro.mkdir()
    if subprocess.run(['mount', '--bind', str(ro), str(ro)], capture_output=True).returncode: pytest.skip('cannot bind-mount here')
    try:
        if subprocess.run(['mount', '-o', 'remount,ro,bind', str(ro)], capture_output=True).returncode: pytest.skip('cannot remount read-only')
        with pytest.raises(ReadOnlyError, match='not writable'): open_shelf(ro/'new.shelf', 'c')
        with pytest.raises(ReadOnlyError, match='not writable'):
            build_shelf(df.iloc[:2], ro/'b.shelf', path=tmp_path, suff='.jpg', size=32, n_workers=0, progress=False)
    finally: subprocess.run(['umount', str(ro)], capture_output=True)
