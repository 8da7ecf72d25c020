"A user's mistake is one line naming the fix: the command line (exit codes too) and the library's table reading behind it."
import subprocess, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from conftest import write_bars
from fastai_shelve.build import build_shelf
from fastai_shelve.codec import ShelfError
from fastai_shelve.store import open_shelf

EXE = str(Path(sys.executable).with_name('fastai-shelve'))
def run(*args): return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)

@pytest.fixture
def csv(tmp_path):
    df = write_bars(tmp_path, 6)
    df.to_csv(tmp_path/'t.csv', index=False)
    return tmp_path, df

def one_error(r, *words):
    "The command failed with exit 2 and one line on stderr holding `words`, no traceback, nothing on stdout."
    assert r.returncode == 2 and r.stdout == '' and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, (r.returncode, r.stderr)
    for w in words: assert w in r.stderr, (w, r.stderr)

def test_a_header_only_csv(csv):
    tmp, df = csv
    df.iloc[:0].to_csv(tmp/'h.csv', index=False)
    one_error(run('build', tmp/'h.csv', tmp/'h.shelf', '--path', tmp, '--suff', '.jpg', '--label-col', 'a', '--quiet'),
              'h.csv has no rows', 'nothing to build')
    assert not (tmp/'h.shelf').exists()

def test_an_id_column_index_out_of_range(csv):
    tmp, _ = csv
    one_error(run('build', tmp/'t.csv', tmp/'b.shelf', '--path', tmp, '--suff', '.jpg', '--fn-col', 99, '--quiet'),
              'fn_col 99', 'has 5 columns', 'from 0 to 4')

def test_a_latin1_csv(csv):
    "A CSV saved by Excel in latin-1: one line naming the file and the encoding to read it with."
    tmp, df = csv
    df['PatientID'] = ['José', 'Zoë', 'p1', 'p1', 'p2', 'p2']
    df.to_csv(tmp/'l.csv', index=False, encoding='latin-1')
    one_error(run('build', tmp/'l.csv', tmp/'l.shelf', '--path', tmp, '--suff', '.jpg', '--quiet'),
              'l.csv is not UTF-8', "encoding='latin-1'")
    with pytest.raises(ShelfError, match="not UTF-8.*encoding='latin-1'"):
        build_shelf(tmp/'l.csv', tmp/'l.shelf', tmp, suff='.jpg', n_workers=0, progress=False)
    r = build_shelf(pd.read_csv(tmp/'l.csv', encoding='latin-1'), tmp/'l.shelf', tmp, suff='.jpg', n_workers=0, progress=False)
    assert r.written == 6  # the fix the message names works

def test_frame_foo_from_the_command_line(csv):
    tmp, _ = csv
    one_error(run('build', tmp/'t.csv', tmp/'f.shelf', '--path', tmp, '--suff', '.jpg', '--frame', 'foo', '--quiet'),
              "frame must be", "'all'", "'foo'")

def test_a_wrong_suffix_is_one_line_naming_it(csv):
    "No file has the suffix given: one `bad:` line saying which suffix the files have, exit 1 (bad records)."
    tmp, _ = csv
    r = run('build', tmp/'t.csv', tmp/'s.shelf', '--path', tmp, '--suff', '.png', '--quiet')
    bad = [l for l in r.stdout.splitlines() if l.startswith('bad:')]
    assert r.returncode == 1 and len(bad) == 1, r.stdout
    assert 'none of the 6 files' in bad[0] and 'id0000.jpg' in bad[0] and '--suff' in bad[0] and "'.png'" in bad[0]

def test_some_missing_files_keep_their_lines_and_a_summary(csv):
    tmp, _ = csv
    for k in ('id0001', 'id0004'): (tmp/f'{k}.jpg').unlink()
    r = run('build', tmp/'t.csv', tmp/'m.shelf', '--path', tmp, '--suff', '.jpg', '--quiet')
    bad = [l for l in r.stdout.splitlines() if l.startswith('bad:')]
    assert r.returncode == 1 and len(bad) == 3, r.stdout
    assert 'id0001.jpg' in bad[0] + bad[1] and 'id0004.jpg' in bad[0] + bad[1]
    assert bad[2].startswith('bad: 2 of 6 files are missing') and '--folder' in bad[2]

def test_info_into_a_closed_pipe_exits_quietly(csv):
    "`fastai-shelve info p | head`: the reader gone, the command stops without a word, as Unix tools do (128 + SIGPIPE)."
    tmp, _ = csv
    build_shelf(tmp/'t.csv', tmp/'i.shelf', tmp, suff='.jpg', n_workers=0, progress=False)
    p = subprocess.Popen([EXE, 'info', str(tmp/'i.shelf')], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before it writes: every write finds the pipe closed
    err = p.communicate(timeout=300)[1].decode()
    assert p.returncode == 141 and err == '', (p.returncode, err)
    r = subprocess.run(f"'{EXE}' info '{tmp/'i.shelf'}' | head -1", shell=True, capture_output=True, text=True, timeout=300)
    assert r.stdout.count('\n') == 1 and r.stderr == ''

def test_mask_path_is_read_under_path(tmp_path, monkeypatch):
    "`mask_path` is a folder under `path`, as `folder` is: found from any working directory; a cwd-relative one is named."
    data = tmp_path/'data'; (data/'img').mkdir(parents=True); (data/'msk').mkdir()
    for i in range(4):
        m = np.zeros((32, 24), np.uint8); m[4:10+i, 3:12] = 1
        Image.fromarray((m * 200).astype(np.uint8)).save(data/'img'/f'k{i}.png')
        Image.fromarray(m).save(data/'msk'/f'k{i}_mask.png')
    df = pd.DataFrame({'id': [f'k{i}' for i in range(4)]})
    elsewhere = tmp_path/'work'; elsewhere.mkdir(); monkeypatch.chdir(elsewhere)
    r = build_shelf(df, tmp_path/'s.shelf', data, folder='img', suff='.png', mask_path='msk', mask_suffix='_mask.png',
                    n_workers=0, progress=False)
    assert r.written == 4 and not r.bad, r.bad
    with open_shelf(tmp_path/'s.shelf') as s:
        np.testing.assert_array_equal(s['k2']['mask'], np.asarray(Image.open(data/'msk'/'k2_mask.png')))
    monkeypatch.chdir(data)  # 'msk' is a folder here, not under path=img: said, before anything is written
    with pytest.raises(ShelfError, match=r"no mask folder .*img/msk.*msk is a folder here, but mask_path is read under path"):
        build_shelf(df, tmp_path/'t.shelf', 'img', suff='.png', mask_path='msk', mask_suffix='_mask.png', n_workers=0, progress=False)
    assert not (tmp_path/'t.shelf').exists()

def test_a_float_category_column_warns_at_the_users_line(tmp_path):
    "0.0/1.0/2.0 becomes fastai's categories [0.0, 1.0, 2.0], with the warning the README promises, pointing at this file."
    df = write_bars(tmp_path, 6)
    df['y'] = [0.0, 1.0, 2.0] * 2
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        build_shelf(df, tmp_path/'f.shelf', tmp_path, suff='.jpg', label_col='y', n_workers=0, progress=False)
    hits = [o for o in w if 'holds floats' in str(o.message)]
    assert len(hits) == 1 and 'RegressionBlock' in str(hits[0].message) and hits[0].filename == __file__, [str(o.message) for o in w]
    with open_shelf(tmp_path/'f.shelf') as s: assert s.meta['vocab'] == [0.0, 1.0, 2.0]
