"Augmentation randomness belongs to the worker and the epoch: fresh in each, repeatable under `set_seed`, TTA passes differ."
import numpy as np, pandas as pd, pytest, torch
from torch import nn
from PIL import Image
from fastai.vision.all import Learner, Flatten, set_seed
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.augment import AlbumentationsTransform, xray_augs, xray_valid_augs

@pytest.fixture(scope='module')
def copies(tmp_path_factory):
    "A shelf of 16 copies of one image (PNG files): any two equal augmented images are a repeated draw."
    tmp = tmp_path_factory.mktemp('copies')
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    for i in range(16): Image.fromarray(img).save(tmp/f'k{i:02d}.png')
    df = pd.DataFrame({'id': [f'k{i:02d}' for i in range(16)], 'a': [i % 2 for i in range(16)], 'b': [1] * 16})
    build_shelf(df, tmp/'s.shelf', path=tmp, suff='.png', label_col=['a', 'b'], n_workers=0, progress=False)
    return tmp/'s.shelf'

def augmented(path, workers, epochs, seed=None, **kw):
    "Every training image of `epochs` epochs, as bytes (with `seed`, the whole run under `set_seed(seed)`)."
    if seed is not None: set_seed(seed)
    # No splitter `seed`: fastai's RandomSplitter(seed=) reseeds torch, and so every worker, whatever `set_seed` said
    dls = ShelfDataLoaders.from_shelf(path, bs=4, valid_pct=0.25, num_workers=workers,
                                      item_tfms=AlbumentationsTransform(xray_augs(48), xray_valid_augs(48)), **kw)
    return [x.cpu().numpy().tobytes() for _ in range(epochs) for b in dls.train for x in b[0]]

def test_every_worker_and_epoch_draws_afresh(copies):
    "2 workers x 3 epochs: each forked worker starts from the same albumentations state unless reseeded."
    xs = augmented(copies, workers=2, epochs=3)
    # Two workers sharing a state, or an epoch repeating the last, repeat a whole run: half the images. The recipe itself
    # repeats an image by chance (all its optional steps skipped, one of ~330 crops of a 64² image): ~2e-5 a pair, 630 pairs
    assert len(xs) == 3 * 12 and len(set(xs)) >= len(xs) - 2, f'{len(set(xs))} distinct of {len(xs)}'

@pytest.mark.parametrize('workers', [0, 2])
def test_set_seed_repeats_a_run(copies, workers):
    a, b, c = (augmented(copies, workers, epochs=2, seed=s) for s in (3, 3, 4))
    assert a == b and a != c
    assert len(set(a)) >= len(a) - 2  # repeatable, yet fresh within the run (but for the recipe's chance repeats, as above)

class Recorder(nn.Module):
    "A tiny real model that keeps every input batch it sees."
    def __init__(self):
        super().__init__()
        self.body, self.seen = nn.Sequential(nn.AdaptiveAvgPool2d(2), Flatten(), nn.Linear(4, 2)), []
    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.body(x)

@pytest.mark.parametrize('workers', [0, 2])
def test_tta_passes_differ(copies, workers):
    dls = ShelfDataLoaders.from_shelf(copies, bs=4, valid_pct=0.25, seed=0, num_workers=workers,
                                      item_tfms=AlbumentationsTransform(xray_augs(48), xray_valid_augs(48)))
    learn = Learner(dls, Recorder(), loss_func=nn.BCEWithLogitsLoss())
    learn.tta(n=2)
    n = len(dls.valid)
    first, second, plain = (torch.cat(learn.model.seen[i*n:(i+1)*n]) for i in range(3))
    assert first.shape == second.shape == plain.shape == (4, 1, 48, 48)
    assert not any(torch.equal(u, v) for u in first for v in second)  # each pass augments afresh
    assert all(torch.equal(u, plain[0]) for u in plain)  # the last pass is validation's resize only: no randomness
