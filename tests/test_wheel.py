"Kaggle offline use: a pure-Python wheel that installs with --no-deps next to the image's own fastai/torch, and runs."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_wheel_installs_offline_and_runs(tmp_path):
    pip = [sys.executable, '-m', 'pip']
    r = subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path/'dist'), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    whl, = (tmp_path/'dist').glob('fastai_shelve-*.whl')
    assert whl.name.endswith('-py3-none-any.whl')  # pure Python: one file for every Kaggle image
    # As on Kaggle: upload the wheel as a dataset, then `pip install --no-deps /kaggle/input/.../*.whl`, no index.
    r = subprocess.run(pip + ['install', '--no-deps', '--no-index', '-q', '--target', str(tmp_path/'site'), str(whl)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import sys, fastai_shelve\n"
            "assert fastai_shelve.__file__.startswith(sys.argv[1]), fastai_shelve.__file__  # the wheel's copy, not the checkout\n"
            "from fastai_shelve.demo import run_demo\n"
            "r = run_demo(sys.argv[2], n=24, size=48, bs=8, epochs=1, n_workers=0, show=False)\n"
            "print('records', r['records'])\n")
    r = subprocess.run([sys.executable, '-c', code, str(tmp_path/'site'), str(tmp_path/'demo')], capture_output=True, text=True,
                       timeout=600, env={**os.environ, 'PYTHONPATH': str(tmp_path/'site'), 'MPLBACKEND': 'Agg'}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith('records 24')
