"""The notebooks are the source: the modules must be what nbdev exports from them, and their own tests must pass.
Each notebook runs once per test run: the docs build (tests/test_docs.py, which runs first) runs them as nbdev_test does
and notes those that passed; only the others run here."""
import re, shutil, subprocess, sys, filecmp
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))

def test_modules_match_notebooks(tmp_path):
    for p in ('nbs', 'pyproject.toml', 'setup.cfg', 'fastai_shelve'): 
        (shutil.copytree if (ROOT/p).is_dir() else shutil.copy)(ROOT/p, tmp_path/p)
    exe = Path(sys.executable).with_name('nbdev-export')
    subprocess.run([str(exe)], cwd=tmp_path, check=True)
    cmp = filecmp.dircmp(ROOT/'fastai_shelve', tmp_path/'fastai_shelve', ignore=['__pycache__'])
    assert not cmp.diff_files and not cmp.right_only, (
        f"modules differ from the notebooks ({cmp.diff_files + cmp.right_only}): edit nbs/ and run nbdev-export")

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb, monkeypatch, nbs_ran):
    import hashlib
    ran = nbs_ran/f'{nb.stem}.ran'  # the docs build (tests/test_docs.py, earlier in the run) ran this very file, and it passed
    if ran.exists() and ran.read_text() == hashlib.sha256(nb.read_bytes()).hexdigest(): return
    from nbdev.test import test_nb
    from nbdev.config import get_config
    monkeypatch.chdir(ROOT)
    ok, _ = test_nb(nb, skip_flags=get_config(ROOT).tst_flags.split())  # as nbdev_test: pyproject.toml's tst_flags
    assert ok, f"{nb.name} failed: see the traceback above"

SHOWS = re.compile(r'show_batch\(|show_results\(|show_images?\(|plt\.')

def test_notebooks_keep_their_figures():
    "Notebooks are saved with their outputs (`python docs/hooks.py nbs/NN_x.ipynb`), so GitHub shows them as the docs do."
    from fastcore.nbio import read_nb
    bare = [f'{nb.stem} cell {c.id}' for nb in NBS for c in read_nb(nb).cells
            if c.cell_type == 'code' and not c.source.startswith('#| export') and SHOWS.search(c.source)
            and not any('image/png' in o.get('data', {}) for o in c.outputs)]
    assert not bare, f"cells that show figures saved without them: {bare}: run python docs/hooks.py on their notebooks"
