"Shared fixtures and helpers: real image files and shelves written to a temporary folder, killing a building process."
import signal, subprocess, time
import numpy as np, pandas as pd, pytest
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

def kill_when(cmd, shelf, n, extra=0., timeout=120):
    "Start `cmd`; SIGKILL it `extra` seconds after `shelf` holds at least `n` records. Whether it was still running."
    from fastai_shelve.store import open_shelf
    from fastai_shelve.codec import ShelfError
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if shelf.exists():
            try:
                with open_shelf(shelf, check=False) as s:  # polled while written: no walk of every version
                    if len(s) >= n: break
            except (ShelfError, FileNotFoundError): pass  # not created yet, or mid-creation
        time.sleep(0.002)
    time.sleep(extra)  # land between commits as well as right after one
    running = p.poll() is None
    p.send_signal(signal.SIGKILL); p.wait()
    return running

@pytest.fixture(scope='session')
def nbs_ran(tmp_path_factory):
    "Where the docs build notes each notebook it ran without error (docs/hooks.py's RAN_ENV): the notebook tests skip those."
    return tmp_path_factory.mktemp('nbs_ran')
