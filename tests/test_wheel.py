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
    # --without-pip: installing pip into the venv costs ~6 s of CPU; the pip on the base path below installs into the venv
    # all the same (it installs where the Python running it has its prefix), as the venv's own pip would
    run([sys.executable, '-m', 'venv', '--without-pip', venv], timeout=300)
    py = venv/'bin'/'python'
    site = Path(run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).stdout.strip())
    # A plain path line: this environment's packages, after the venv's own; its .pth files (our editable install) don't run
    (site/'base_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    pins = [f'{p}=={v}' for p,v in lowest_versions().items()]
    pip = [py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--retries', '10', '--timeout', '60']  # the registry's hiccups
    run([*pip, *pins], timeout=900)
    # as on Kaggle: no index; --ignore-installed, or pip would take this environment's editable install for the wheel
    run([*pip, '--no-deps', '--no-index', '--ignore-installed', wheel], timeout=300)
    return venv

# No PYTHONPATH: a developer's checkout on it would be imported instead of the wheel
ENV = {**{k: v for k,v in os.environ.items() if k != 'PYTHONPATH'}, 'NO_ALBUMENTATIONS_UPDATE': '1', 'MPLBACKEND': 'Agg'}
# fastai's DataLoader internals (the whole-batch path against TfmdDL), split-dependent albumentations, FastPiecewiseAffine
# with workers, show_batch/predict/get_preds; the store's round trip and the stdlib-shelve refusal
SMOKE = ('batches_equal_per_item_path or augmentation_only_on_training_set or xray_recipe_end_to_end_with_workers '
         'or show_batch_predict_get_preds or round_trip_dtypes_shapes or seed_shelve_refused_then_read')

def test_wheel_is_pure_python(wheel):
    assert wheel.name.endswith('-py3-none-any.whl')  # one file for every Kaggle image

# One process at the lowest versions does all three checks (importing fastai and albumentations there costs ~15 s of CPU
# a process): the versions it imports; then, before anything else has run in it, the wheel's installed `fastai-shelve`
# script, executed as a console script is (`__main__`, its argv), on the demo; then the smoke of the tests.
AT_LOWEST = '''
import sys, json, runpy, contextlib
import fastai, fastcore, albumentations, fastai_shelve
script, out, *smoke = sys.argv[1:]
json.dump(dict(fastai=fastai.__version__, fastcore=fastcore.__version__, albumentations=albumentations.__version__,
               at=fastai_shelve.__file__), open(f'{out}/versions.json', 'w'))
sys.argv = [script, 'demo', '--out', f'{out}/demo', '--n', '24', '--size', '32', '--epochs', '1', '--bs', '8', '--workers', '0']
with open(f'{out}/demo.out', 'w') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
    try: runpy.run_path(script, run_name='__main__'); code = 0
    except SystemExit as e: code = e.code or 0
open(f'{out}/demo.code', 'w').write(str(code))
import pytest
sys.exit(pytest.main(smoke))
'''

@pytest.fixture(scope='module')
def at_lowest(lowest_venv, tmp_path_factory):
    "The versions, the demo's output and exit code, and the smoke's output, from one process in `lowest_venv`."
    out = tmp_path_factory.mktemp('at_lowest')
    (out/'run.py').write_text(AT_LOWEST)
    # run from `out`: with the checkout as the working directory Python would import its fastai_shelve, not the wheel's
    r = subprocess.run([str(lowest_venv/'bin'/'python'), str(out/'run.py'), str(lowest_venv/'bin'/'fastai-shelve'), str(out),
                        '-q', '-x', '-p', 'no:cacheprovider', '-m', 'not slow', '-k', SMOKE,
                        str(ROOT/'tests'/'test_fastai.py'), str(ROOT/'tests'/'test_store.py')],
                       capture_output=True, text=True, env=ENV, cwd=out, timeout=1500)
    return out, r

def test_lowest_versions_are_what_runs(lowest_venv, at_lowest):
    out, _ = at_lowest
    got = json.loads((out/'versions.json').read_text())
    assert got.pop('at').startswith(str(lowest_venv)), 'fastai_shelve was not imported from the installed wheel'
    assert got == lowest_versions()

def test_demo_runs_from_the_wheel(lowest_venv, at_lowest):
    out, _ = at_lowest
    script = lowest_venv/'bin'/'fastai-shelve'
    # what running it as a command adds to running its code: it is executable, with this venv's Python as interpreter
    assert os.access(script, os.X_OK) and script.read_text().splitlines()[0].startswith(f"#!{lowest_venv/'bin'/'python'}")
    text = (out/'demo.out').read_text()
    assert (out/'demo.code').read_text() == '0', text[-3000:]  # the smoke runs workers at these versions
    assert re.search(r'accuracy_multi \d\.\d+', text), text[-2000:]
    assert (out/'demo'/'train.shelf').exists()

def test_fastai_and_store_smoke_at_lowest_versions(at_lowest):
    _, r = at_lowest
    assert r.returncode == 0 and re.search(r'\b6 passed', r.stdout) and 'failed' not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
