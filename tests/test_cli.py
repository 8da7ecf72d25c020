"The installed `fastai-shelve` command: real processes, real files, clear errors and exit codes."
import subprocess, sys, shelve
from pathlib import Path
import numpy as np, pytest
from conftest import write_bars

EXE = str(Path(sys.executable).with_name('fastai-shelve'))
def run(*args): return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)

def test_build_info_verify(tmp_path):
    df = write_bars(tmp_path, 10)
    (tmp_path/'id0004.jpg').write_bytes(b'broken')
    df.to_csv(tmp_path/'train.csv', index=False)
    r = run('build', tmp_path/'train.csv', tmp_path/'t.shelf', '--path', tmp_path, '--fn-col', 'StudyInstanceUID',
            '--suff', '.jpg', '--label-col', 'a,b,c', '--size', 32, '--workers', 2, '--quiet')
    assert r.returncode == 1, r.stderr  # 1: done, but bad records were found
    assert '9 written' in r.stdout and "bad:" in r.stdout and 'id0004' in r.stdout
    r = run('info', tmp_path/'t.shelf')
    assert r.returncode == 0 and 'records: 9' in r.stdout and 'uint8[32, 32]' in r.stdout and '"a", "b", "c"' in r.stdout
    r = run('verify', tmp_path/'t.shelf')
    assert r.returncode == 0 and '9 of 9 records ok' in r.stdout
    df.drop(index=4).to_csv(tmp_path/'good.csv', index=False)
    r = run('build', tmp_path/'good.csv', tmp_path/'t.shelf', '--path', tmp_path, '--fn-col', 'StudyInstanceUID',
            '--suff', '.jpg', '--label-col', 'a,b,c', '--size', 32, '--quiet')
    assert r.returncode == 0 and '0 written, 9 already there, 0 bad' in r.stdout, r.stdout + r.stderr

def test_a_category_build_prints_one_line(tmp_path):
    "A build with one category column prints its summary alone: no warning of a library it imports on the way."
    df = write_bars(tmp_path, 6)
    df['finding'] = ['cvc', 'ett'] * 3
    df.to_csv(tmp_path/'train.csv', index=False)
    r = run('build', tmp_path/'train.csv', tmp_path/'c.shelf', '--path', tmp_path, '--suff', '.jpg', '--label-col', 'finding',
            '--size', 16, '--workers', 0, '--quiet')
    assert r.returncode == 0 and r.stderr == '' and len(r.stdout.splitlines()) == 1 and '6 written' in r.stdout, r.stdout + r.stderr

def test_convert_of_a_bad_record_exits_1_as_verify_does(tmp_path):
    "A record that does not read is bad records found, for `convert` as for `verify` and `info`: exit 1, one line naming the key."
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s.put_many({f'k{i}': {'image': np.full((8, 8), i, np.uint8)} for i in range(4)})
        with s.txn() as txn: b = bytearray(txn.get(b'k1'))
        b[0] ^= 0xff  # its magic: not a record any more
        s._commit([(b'k1', bytes(b))])
    for cmd in (('verify',), ('info',), ('convert', tmp_path/'c.shelf')):
        r = run(*cmd[:1], tmp_path/'s.shelf', *cmd[1:])
        assert r.returncode == 1 and "'k1'" in r.stdout + r.stderr and 'Traceback' not in r.stderr, (cmd, r.stdout, r.stderr)

def test_build_compressed_and_convert(tmp_path):
    df = write_bars(tmp_path, 12)
    df['StudyInstanceUID'] = [f'{i:03d}' for i in range(12)]  # ids with leading zeros stay text
    for i in range(12): (tmp_path/f'id{i:04d}.jpg').rename(tmp_path/f'{i:03d}.jpg')
    df.to_csv(tmp_path/'train.csv', index=False)
    r = run('build', tmp_path/'train.csv', tmp_path/'z.shelf', '--path', tmp_path, '--fn-col', 'StudyInstanceUID',
            '--suff', '.jpg', '--label-col', 'a,b,c', '--size', 48, '--compression', 'zstd', '--quiet')
    assert r.returncode == 0 and '12 written' in r.stdout, r.stdout + r.stderr
    r = run('info', tmp_path/'z.shelf')
    assert r.returncode == 0 and 'compression: zstd' in r.stdout, r.stdout
    r = run('convert', tmp_path/'z.shelf', tmp_path/'raw.shelf')
    assert r.returncode == 0 and '12 records' in r.stdout
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'z.shelf') as z, open_shelf(tmp_path/'raw.shelf') as raw:
        assert z.keys() == raw.keys() == [f'{i:03d}' for i in range(12)]
        np.testing.assert_array_equal(z.get_batch(z.keys())['image'], raw.get_batch(z.keys())['image'])
        assert raw.meta['compression'] is None and raw.meta['label_names'] == ['a', 'b', 'c']
    r = run('build', tmp_path/'train.csv', tmp_path/'z.shelf', '--path', tmp_path, '--fn-col', 'StudyInstanceUID',
            '--suff', '.jpg', '--label-col', 'a,b,c', '--size', 48, '--compression', 'gzip', '--quiet')
    assert r.returncode == 2 and 'unknown compression' in r.stderr and 'Traceback' not in r.stderr

def test_verify_fails_on_a_changed_byte(tmp_path):
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'s.shelf', 'c') as s: s.put_many({f'k{i}': {'x': np.full(5000, i, np.uint8)} for i in range(5)})
    data = bytearray((tmp_path/'s.shelf').read_bytes())
    i = data.find(bytes([3]) * 5000)
    assert i > 0
    data[i + 100] = 7
    (tmp_path/'s.shelf').write_bytes(bytes(data))
    r = run('verify', tmp_path/'s.shelf')
    assert r.returncode == 1 and "bad record 'k3'" in r.stdout and 'checksum' in r.stdout

@pytest.mark.parametrize('args, msg', [
    (('info', 'nope.shelf'), 'no shelf at'),
    (('verify', '.'), 'is a directory'),
    (('build', 'missing.csv', 'x.shelf'), 'no CSV at'),
    (('frobnicate',), 'usage: fastai-shelve'),
])
def test_errors_are_clear(tmp_path, args, msg):
    r = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr

def test_untrusted_shelve_info_and_verify(tmp_path):
    with shelve.open(str(tmp_path/'old.db')) as db: db['a'] = {'image': np.zeros((4, 4), np.uint8)}
    r = run('info', tmp_path/'old.db')
    assert r.returncode == 0 and 'holds_pickles: True' in r.stdout
    r = run('verify', tmp_path/'old.db')
    assert r.returncode == 2 and 'holds pickles' in r.stderr

def test_python_m_runs_the_cli(tmp_path):
    "`python -m fastai_shelve.cli` (a Kaggle cell's `!python -m ...`) runs the command, as `fastai-shelve` does: it used to exit 0 doing nothing."
    r = subprocess.run([sys.executable, '-m', 'fastai_shelve.cli', 'info', tmp_path/'nope.shelf'], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr.strip()) == (2, f"fastai-shelve info: error: no shelf at {tmp_path/'nope.shelf'}")

def test_a_copy_of_a_stopped_build_warns_in_one_line(tmp_path):
    "`convert` of a shelf whose build stopped: one warning line saying what to finish (not Python's two, with our code), exit 0."
    df = write_bars(tmp_path, 4)
    (tmp_path/'id0003.jpg').write_bytes(b'junk')
    df.to_csv(tmp_path/'train.csv', index=False)
    r = run('build', tmp_path/'train.csv', tmp_path/'s.shelf', '--path', tmp_path, '--suff', '.jpg', '--size', 16, '--strict', '--quiet')
    assert r.returncode == 2 and 'id0003' in r.stderr, r.stderr
    r = run('convert', tmp_path/'s.shelf', tmp_path/'c.shelf')
    warned = [l for l in r.stderr.splitlines() if 'warning' in l]
    assert r.returncode == 0 and len(warned) == 1 and 'warnings.warn' not in r.stderr, r.stderr
    assert warned[0].startswith('fastai-shelve convert: warning: ') and 'finish that build, then run convert_shelf again' in warned[0]
