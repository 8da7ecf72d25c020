"""Kaggle offline use, at the lowest versions `setup.cfg` allows.

A fresh venv that already has fastai, as a Kaggle image does: torch, numpy and the rest come from this environment
(a `.pth` line, like a system site-packages), and fastai, fastcore and albumentations are installed into the venv at
the lowest versions `setup.cfg` admits. Our wheel then goes in as on Kaggle, `pip install --no-deps --no-index`, and
the CLI demo and a smoke of the fastai and store tests run from that copy: those that cross fastai's, fastcore's and
albumentations' APIs (the whole files run in the main environment already).
"""
import configparser, json, os, re, subprocess, sys, sysconfig
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWEST_OF = ('fastai', 'fastcore', 'albumentations')

def lowest_versions() -> dict:
    "{package: lowest version} from `setup.cfg`'s `install_requires` for `LOWEST_OF`."
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'setup.cfg')
    reqs = dict(re.match(r'([\w-]+)\s*>=\s*([\w.]+)', l).groups() for l in cfg['options']['install_requires'].split() if '>=' in l)
    return {p: reqs[p] for p in LOWEST_OF}

def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f'{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r

@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    d = tmp_path_factory.mktemp('dist')
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', d, ROOT], timeout=300)
    whl, = d.glob('fastai_shelve-*.whl')
    return whl

@pytest.fixture(scope='module')
def lowest_venv(tmp_path_factory, wheel):
    venv = tmp_path_factory.mktemp('venv')/'lowest'
    run([sys.executable, '-m', 'venv', venv], timeout=300)
    py = venv/'bin'/'python'
    site = Path(run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).stdout.strip())
    # A plain path line: this environment's packages, after the venv's own; its .pth files (our editable install) don't run
    (site/'base_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    pins = [f'{p}=={v}' for p,v in lowest_versions().items()]
    run([py, '-m', 'pip', 'install', '-q', *pins], timeout=900)
    # as on Kaggle: no index; --ignore-installed, or pip would take this environment's editable install for the wheel
    run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', '--ignore-installed', wheel], timeout=300)
    return venv

# No PYTHONPATH: a developer's checkout on it would be imported instead of the wheel
ENV = {**{k: v for k,v in os.environ.items() if k != 'PYTHONPATH'}, 'NO_ALBUMENTATIONS_UPDATE': '1', 'MPLBACKEND': 'Agg'}
# fastai's DataLoader internals (the whole-batch path against TfmdDL), split-dependent albumentations, FastPiecewiseAffine
# with workers, show_batch/predict/get_preds; the store's round trip and the stdlib-shelve refusal
SMOKE = ('batches_equal_per_item_path or augmentation_only_on_training_set or xray_recipe_end_to_end_with_workers '
         'or show_batch_predict_get_preds or round_trip_dtypes_shapes or seed_shelve_refused_then_read')

def test_wheel_is_pure_python(wheel):
    assert wheel.name.endswith('-py3-none-any.whl')  # one file for every Kaggle image

def test_lowest_versions_are_what_runs(lowest_venv):
    code = ('import json, fastai, fastcore, albumentations, fastai_shelve\n'
            'print(json.dumps(dict(fastai=fastai.__version__, fastcore=fastcore.__version__, '
            'albumentations=albumentations.__version__, at=fastai_shelve.__file__)))')
    got = json.loads(run([lowest_venv/'bin'/'python', '-c', code], env=ENV, cwd=lowest_venv).stdout)
    assert got.pop('at').startswith(str(lowest_venv)), 'fastai_shelve was not imported from the installed wheel'
    assert got == lowest_versions()

def test_demo_runs_from_the_wheel(lowest_venv, tmp_path):
    r = run([lowest_venv/'bin'/'fastai-shelve', 'demo', '--out', tmp_path/'demo', '--n', 24, '--size', 32, '--epochs', 1,
             '--bs', 8, '--workers', 0], env=ENV, cwd=tmp_path, timeout=600)  # the smoke runs workers at these versions
    assert re.search(r'accuracy_multi \d\.\d+', r.stdout), r.stdout[-2000:]
    assert (tmp_path/'demo'/'train.shelf').exists()

def test_fastai_and_store_smoke_at_lowest_versions(lowest_venv, tmp_path):
    # run from tmp_path: with the checkout as the working directory Python would import its fastai_shelve, not the wheel's
    r = run([lowest_venv/'bin'/'python', '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', '-m', 'not slow', '-k', SMOKE,
             ROOT/'tests'/'test_fastai.py', ROOT/'tests'/'test_store.py'], env=ENV, cwd=tmp_path, timeout=1200)
    assert re.search(r'\b6 passed', r.stdout) and 'failed' not in r.stdout, r.stdout[-2000:]
