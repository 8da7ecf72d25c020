"The command's rough edges: a missing image folder, help and version, a readable `info`, `--frame all`."
import subprocess, sys
from pathlib import Path
import numpy as np, pytest
from conftest import write_bars

EXE = str(Path(sys.executable).with_name('fastai-shelve'))
def run(*args): return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)

def test_missing_image_folder_is_one_message(tmp_path):
    df = write_bars(tmp_path, 6)
    df.to_csv(tmp_path/'t.csv', index=False)
    r = run('build', tmp_path/'t.csv', tmp_path/'t.shelf', '--path', tmp_path/'nowhere', '--suff', '.jpg', '--quiet')
    assert r.returncode == 2 and r.stdout == '' and 'Traceback' not in r.stderr
    assert r.stderr.count('\n') == 1 and 'no folder' in r.stderr and 'nowhere' in r.stderr and 'missing file' not in r.stderr
    assert not (tmp_path/'t.shelf').exists()  # refused before anything was written

def test_help_and_version():
    r = run('--help')
    assert r.returncode == 0 and 'usage: fastai-shelve' in r.stdout and 'build' in r.stdout and r.stderr == ''
    r = run()
    assert r.returncode == 2 and 'usage: fastai-shelve' in r.stderr and r.stdout == ''
    import fastai_shelve
    for flag in ('--version', '-V'):
        r = run(flag)
        assert r.returncode == 0 and r.stdout.strip() == f'fastai-shelve {fastai_shelve.__version__}'

def test_info_summarises_the_histogram(tmp_path):
    df = write_bars(tmp_path, 6)
    df.to_csv(tmp_path/'t.csv', index=False)
    assert run('build', tmp_path/'t.csv', tmp_path/'t.shelf', '--path', tmp_path, '--suff', '.jpg', '--quiet').returncode == 0
    r = run('info', tmp_path/'t.shelf')
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and max(map(len, lines)) < 600, max(map(len, lines))  # was one 2 KB line of 256 counts
    px = [l for l in lines if l.strip().startswith('pixels')]
    assert len(px) == 1 and 'mean' in px[0] and 'p50' in px[0] and '"hist"' not in r.stdout
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'t.shelf') as s: h = np.array(s.meta['stats']['hist'][0])
    lo, hi = np.flatnonzero(h)[[0, -1]]
    assert f': {lo}..{hi}, mean' in px[0]

def test_frame_all_from_the_command_line(tmp_path):
    pydicom = pytest.importorskip('pydicom')
    from test_dicom import write_dicom
    write_dicom(tmp_path/'c.dcm', np.stack([np.full((10, 12), 100 * i) + np.arange(12) for i in range(3)]))
    (tmp_path/'t.csv').write_text('id\nc\n')
    r = run('build', tmp_path/'t.csv', tmp_path/'t.shelf', '--path', tmp_path, '--suff', '.dcm', '--frame', 'all', '--quiet')
    assert r.returncode == 0 and '3 written' in r.stdout, r.stdout + r.stderr
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'t.shelf') as s: assert s.keys() == ['c#0000', 'c#0001', 'c#0002'] and s.table.file.tolist() == ['c'] * 3

def test_info_exits_1_for_a_bad_record_and_a_damaged_header(tmp_path):
    "info on a shelf whose record is another key's, or whose first LMDB meta page is zeroed: bad data (exit 1), one line, not a usage error."
    from fastai_shelve.store import open_shelf
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as s: s.put_many({k: {'image': np.full((4, 4), i, np.uint8)} for i, k in enumerate(('a', 'b'))})
    with open_shelf(p, 'w') as s:
        with s.txn() as txn: b = bytes(txn.get(b'b'))
        s._commit([(b'a', b)])  # b's record under a: the first key info reads
    r = run('info', p)
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'another key' in r.stderr, (r.returncode, r.stderr)
    raw = bytearray((tmp_path/'s.shelf').read_bytes()); raw[:4096] = bytes(4096)  # LMDB's first meta page zeroed
    (tmp_path/'z.shelf').write_bytes(bytes(raw))
    r = run('info', tmp_path/'z.shelf')
    assert r.returncode == 1 and 'first LMDB meta page' in r.stderr, (r.returncode, r.stderr)
    (tmp_path/'t.txt').write_bytes(bytes(9000))  # no LMDB file at all: still not a shelf, a usage error
    r = run('info', tmp_path/'t.txt')
    assert r.returncode == 2 and 'is not a shelf' in r.stderr, (r.returncode, r.stderr)
