"Shared fixtures and helpers: real image files and shelves written to a temporary folder, killing a build at a commit."
import os, subprocess, time
# One intra-op thread here and in every process a test starts (inherited): the tests' models are tiny, and on a small
# machine a second OpenMP thread spin-waits for the other (a fifth of the training tests' CPU time, measured) and gains nothing.
# DataLoader workers use one thread anyway (PyTorch sets it); torchrun sets the same for its ranks. A value set outside wins.
for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # albumentations' online version check: no network in tests
import numpy as np, pandas as pd, pytest, torch
# On a GPU, full float32 convolutions: tests compare a GPU's results with the CPU's, and TF32 (cuDNN's default) differs by
# ~1e-3 of the value, more than a regression output's tolerance
torch.backends.cudnn.allow_tf32 = False
from PIL import Image

def bars_image(labels, h=96, w=80, rng=None):
    "A gray image with a bright bar in band i for each positive label i: a learnable multi-label task."
    rng = rng or np.random.default_rng(0)
    img = rng.integers(0, 60, (h, w), dtype=np.uint8)
    for j in np.flatnonzero(labels): img[8+28*j:20+28*j, 8:w-8] = 230
    return img

def write_bars(folder, n, seed=0, ext='.jpg'):
    "Write `n` bars images as real files; return the DataFrame describing them (from_df shape)."
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = rng.integers(0, 2, 3)
        Image.fromarray(bars_image(lab, rng=rng)).save(folder/f'id{i:04d}{ext}')
        rows.append(dict(StudyInstanceUID=f'id{i:04d}', a=lab[0], b=lab[1], c=lab[2], PatientID=f'p{i//3}'))
    return pd.DataFrame(rows)

@pytest.fixture
def bars(tmp_path):
    "(folder, DataFrame) of 48 real JPEGs."
    return tmp_path, write_bars(tmp_path, 48)

@pytest.fixture
def bars_shelf(bars):
    from fastai_shelve.build import build_shelf
    folder, df = bars
    build_shelf(df, folder/'bars.shelf', folder, suff='.jpg', label_col=['a', 'b', 'c'], size=64,
                n_workers=0, progress=False)
    return folder/'bars.shelf', df

def kill_at_commit(cmd, n:int, during:bool=False, timeout:float=600) -> tuple:
    "Run `cmd` ([python, script, args...]); SIGKILL it at the commit that brings its shelf to `n` records: after, or `during` it."
    # tests/pause_at_commit.py runs the script and holds it there, alive, telling us on its stdout: the kill lands at a point
    # the shelf names, not after a guessed delay. `timeout` only guards against a hang.
    import select
    from pathlib import Path
    runner = Path(__file__).with_name('pause_at_commit.py')
    p = subprocess.Popen([cmd[0], str(runner), str(n), 'during' if during else 'after', *map(str, cmd[1:])],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)  # unbuffered: select sees every line
    line, t0 = [], time.monotonic()
    try:
        while not line or line[0] not in ('committed', 'open', 'ended'):
            if not select.select([p.stdout], [], [], max(0., timeout - (time.monotonic() - t0)))[0]: line = ['hung']; break
            out = p.stdout.readline()
            if not out: line = ['exited', str(p.wait())]; break
            line = out.decode().split()
    finally:
        p.kill(); p.wait(); p.stdin.close(); p.stdout.close()
    assert line[0] in ('committed', 'open'), f"the build never reached {n} records: {' '.join(line)}"
    assert line[0] == ('open' if during else 'committed'), f"the pause came at the wrong point: {' '.join(line)}"
    return (line[0], *map(int, line[1:]))  # ('committed', records) or ('open', records before, records in the transaction)

@pytest.fixture(scope='session', autouse=True)
def scratch_tmp(tmp_path_factory):
    "Temporary folders made by the tests, the notebooks they run and the processes they start, all under pytest's own."
    # `tempfile` here, $TMPDIR for every process started: pytest keeps its last three runs' folders, while the notebooks'
    # `mkdtemp` folders in /tmp were never removed (594 of them, 9.7 GB, after three days of runs on the project machine)
    import tempfile
    d = tmp_path_factory.mktemp('tmp')
    old = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'], tempfile.tempdir = str(d), str(d)
    os.environ.setdefault('FASTAI_SHELVE_CACHE', str(d/'walked'))  # walk marks: none left in the user's cache by tests
    yield d
    if old[0] is None: os.environ.pop('TMPDIR', None)
    else: os.environ['TMPDIR'] = old[0]
    tempfile.tempdir = old[1]

@pytest.fixture(scope='session')
def nbs_ran(tmp_path_factory):
    "Where the docs build notes each notebook it ran without error (docs/hooks.py's RAN_ENV): the notebook tests skip those."
    return tmp_path_factory.mktemp('nbs_ran')

# Another Python process, started once a session: importing fastai costs ~8 s of CPU a process, and several tests need
# a process that holds none of this one's objects (a Learner loaded from its export with the shelf deleted, what
# importing `data` alone loads). Each script runs as `python script args` would run it: `__main__`, its own argv and
# working directory, its exit code, and what reached file descriptors 1 and 2 (C libraries' writes too).
SERVE = '''
import os, sys, json, runpy, traceback
import fastai_shelve.data  # first and alone: what it loads is what importing it loads (tests/test_architecture.py)
ctl = os.fdopen(os.dup(1), 'w')
print(json.dumps(sorted(sys.modules)), file=ctl, flush=True)
def run(script, args, cwd, out, err):
    sys.stdout.flush(); sys.stderr.flush()
    saved, here, argv, path0 = (os.dup(0), os.dup(1), os.dup(2)), os.getcwd(), sys.argv, sys.path[0]
    with open(os.devnull) as fi, open(out, 'w') as fo, open(err, 'w') as fe:
        for fd, f in zip((0, 1, 2), (fi, fo, fe)): os.dup2(f.fileno(), fd)
    try:
        os.chdir(cwd); sys.argv, sys.path[0] = [script, *args], os.path.dirname(os.path.abspath(script))
        try: runpy.run_path(script, run_name='__main__'); return 0
        except SystemExit as e:
            if isinstance(e.code, str): print(e.code, file=sys.stderr)
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException: traceback.print_exc(); return 1
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        for fd, old in zip((0, 1, 2), saved): os.dup2(old, fd); os.close(old)
        os.chdir(here); sys.argv, sys.path[0] = argv, path0
for line in sys.stdin: print(json.dumps(run(*json.loads(line))), file=ctl, flush=True)
'''

class OtherProcess:
    "`run(script, *args)` in a Python process of its own, kept for the session; a `CompletedProcess` as `subprocess.run` gives."
    def __init__(self, tmp): self.tmp, self.p, self.n = tmp, None, 0
    def start(self):
        import sys
        self.p = subprocess.Popen([sys.executable, '-c', SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._modules = self._reply(600)
    @property
    def modules(self) -> list:
        "The modules the process held after its first import, `fastai_shelve.data`."
        if self.p is None: self.start()
        return self._modules
    def _reply(self, timeout):
        import json, select
        if not select.select([self.p.stdout], [], [], timeout)[0]:
            self.close(); raise subprocess.TimeoutExpired('other process', timeout)
        line = self.p.stdout.readline()
        if not line: rc = self.p.wait(); self.p = None; raise RuntimeError(f'the other process died (exit code {rc})')
        return json.loads(line)
    def run(self, script, *args, cwd='.', timeout=300):
        import json
        if self.p is None: self.start()
        self.n += 1; out, err = self.tmp/f'{self.n}.out', self.tmp/f'{self.n}.err'
        args = [str(a) for a in args]
        self.p.stdin.write(json.dumps([str(script), args, str(cwd), str(out), str(err)]) + '\n'); self.p.stdin.flush()
        rc = self._reply(timeout)
        return subprocess.CompletedProcess([str(script), *args], rc, out.read_text(), err.read_text())
    def close(self):
        if self.p is not None: self.p.kill(); self.p.wait(); self.p = None

@pytest.fixture(scope='session')
def other_process(tmp_path_factory):
    "One `OtherProcess` for the session."
    o = OtherProcess(tmp_path_factory.mktemp('other_process'))
    yield o
    o.close()
