"fastai integration: batch fetch DataLoader, augmentation by split, training, show_batch, test_dl, predict."
import os, weakref, numpy as np, pytest, torch
from torch import nn
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import albumentations as A
from fastai.vision.all import Learner, BCEWithLogitsLossFlat, TfmdDL, accuracy_multi, Flatten, set_seed
from fastai_shelve.lmdb_shelf import Shelf
from fastai_shelve.store import open_shelf
from fastai_shelve.data import ShelfDataLoaders, shelf_dblock
from fastai_shelve.fetch import ShelfDL
from fastai_shelve.augment import AlbumentationsTransform, xray_augs, xray_valid_augs

def tiny_cnn():
    # Pools to 4 rows so a bar's vertical band survives: enough for the bars task, fast on a CPU.
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.AdaptiveMaxPool2d((4, 1)), Flatten(), nn.Linear(32, 3))

def test_learner_trains_loss_falls(bars_shelf):
    set_seed(0, reproducible=True)  # a fixed init and order: the assertion is about our data, not luck
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0)
    learn = Learner(dls, tiny_cnn(), loss_func=BCEWithLogitsLossFlat(), metrics=accuracy_multi)
    before = learn.validate()[0]
    learn.fit_one_cycle(6, 3e-2)
    after, acc = learn.validate()
    assert after < before * 0.7, (before, after)
    assert acc > 0.8

def _batches(dl): return [tuple(t.clone() for t in b) for b in dl]

@pytest.mark.parametrize('n_workers', [0, 2])
def test_training_uses_the_same_batch_arrays_again(bars_shelf, n_workers):
    "A Learner's epochs fill the pool's batch arrays again, never fresh ones: none held past its step (cycles included)."
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=4, seed=0, num_workers=n_workers)  # 10 training batches an epoch
    learn = Learner(dls, tiny_cnn(), loss_func=BCEWithLogitsLossFlat(), metrics=accuracy_multi)
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    pool = dls.train.batch_pool()
    assert len(pool.entries) > 0 and pool.misses == 0, f'{pool.misses} batches in fresh arrays'
    it = iter(dls.train.new(after_batch=None))
    first = next(it)
    ref = weakref.ref(first[0])
    del first; next(it)  # the consumer let go of the first batch and took the next: the loader holds none of it
    assert ref() is None, 'the loader still holds the first batch'

def test_batches_equal_per_item_path(bars_shelf):
    "No augmentation: the batch fetch gives bit-for-bit the batches of fastai's plain per-item TfmdDL."
    path, _ = bars_shelf
    shelf = open_shelf(path)
    dls = shelf_dblock(shelf, seed=1).dataloaders(shelf.keys(), bs=7, num_workers=0, shelf=shelf)
    assert isinstance(dls.valid, ShelfDL)
    for dl in (dls.train.new(shuffle=False, drop_last=False), dls.valid):
        assert dl.batch_plans() is not None  # the whole-batch path is the one under test
        plain = dl.new(cls=TfmdDL)
        assert type(plain) is TfmdDL
        a, b = _batches(dl), _batches(plain)
        assert len(a) == len(b) == len(dl)
        for x, y in zip(a, b):
            for u, v in zip(x, y): assert torch.equal(u, v) and type(u) == type(v)

def test_whole_batch_equals_items_for_rgb_and_categories(tmp_path):
    "Colour images and single-label categories: whole-batch, item-by-item and plain fastai give the same batches."
    import pandas as pd
    from PIL import Image
    from fastai_shelve.build import build_shelf
    rng = np.random.default_rng(3)
    for i in range(13): Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path/f'{i}.png')
    df = pd.DataFrame({'id': range(13), 'finding': rng.choice(['cvc', 'ett', 'ngt'], 13)})
    build_shelf(df, tmp_path/'c.shelf', path=tmp_path, suff='.png', label_col='finding', gray=False, progress=False, n_workers=0)
    dls = ShelfDataLoaders.from_shelf(tmp_path/'c.shelf', bs=4, seed=0, num_workers=0, shuffle=False)
    dl = dls.train.new(drop_last=False)
    assert dl.batch_plans() is not None
    with_items = dl.new(after_item=lambda o: o)  # any other item transform forces the per-item path
    assert with_items.batch_plans() is None
    for other in (with_items, dl.new(cls=TfmdDL)):
        for (x, y), (u, v) in zip(dl, other):
            assert x.shape[1] == 3 and torch.equal(x, u) and torch.equal(y, v) and type(x) == type(u) and type(y) == type(v)
    assert list(dls.vocab) == ['cvc', 'ett', 'ngt'], dls.vocab

def test_a_json_value_field_reads_whole_batch_after_batch(tmp_path):
    "A `ShelfReader` of a record's JSON value: every batch, the first in fresh arrays and the rest in the pool's, equals fastai's."
    from fastai.vision.all import DataBlock, TransformBlock, IndexSplitter, Transform, TensorImageBW, TensorCategory
    from fastai_shelve.fetch import ShelfReader
    with open_shelf(tmp_path/'v.shelf', 'n') as s:
        s.put_many([(f'k{i:02d}', {'image': np.full((8, 8), i, np.uint8), 'tag': 'ab'[i % 3 == 0]}) for i in range(16)])
    shelf = open_shelf(tmp_path/'v.shelf')
    class ToImage(Transform):
        def encodes(self, o:np.ndarray): return TensorImageBW(torch.from_numpy(o)[None])
        def encodes_batch(self, o:np.ndarray): return TensorImageBW(torch.from_numpy(o)[:, None])
    class ToTag(Transform):
        def encodes(self, o): return TensorCategory('ab'.index(o))
        def encodes_batch(self, o): return TensorCategory(torch.tensor(['ab'.index(v) for v in o]))
    db = DataBlock(blocks=(TransformBlock(type_tfms=ToImage()), TransformBlock(type_tfms=ToTag())), get_x=ShelfReader(shelf),
                   get_y=ShelfReader(shelf, 'tag'), splitter=IndexSplitter(range(12, 16)), dl_type=ShelfDL)
    dl = db.dataloaders(shelf.keys(), bs=4, shuffle=False, num_workers=0, device='cpu').train
    assert dl.batch_plans() is not None
    for _ in range(2):
        got, want = list(dl), list(dl.new(cls=TfmdDL))
        assert len(got) == len(want) == 3
        for (x, y), (u, v) in zip(got, want): assert torch.equal(x, u) and torch.equal(y, v) and type(y) == type(v)

class CountingShelf(Shelf):
    "A shelf that logs each handle it opens, with the pid that opened it."
    log = None
    def _open(self):
        super()._open()
        with open(self.log, 'a') as f: f.write(f'{os.getpid()}\n')

def test_each_worker_opens_once_per_epoch(bars_shelf, tmp_path):
    "Item by item (a transform without a batch version), worker processes read: each opens the file once."
    from fastai.vision.all import Resize
    path, _ = bars_shelf
    CountingShelf.log = str(tmp_path/'opens.log')
    shelf = CountingShelf(path)
    dls = ShelfDataLoaders.from_shelf(shelf, bs=4, seed=0, num_workers=2, item_tfms=Resize(48))
    assert dls.train.batch_plans() is None
    (tmp_path/'opens.log').write_text('')
    n_batches = 0
    for epoch in range(2):
        for _ in dls.train: n_batches += 1
    pids = (tmp_path/'opens.log').read_text().split()
    assert n_batches >= 16
    assert str(os.getpid()) not in pids
    assert len(pids) == 4 and len(set(pids)) == 4, pids  # 2 workers x 2 epochs, one open each

def test_whole_batches_need_no_worker_processes(bars_shelf, tmp_path):
    "Whole batches with num_workers=2: read in this process (threads), no worker opens the file; the batches are 0 workers'."
    path, _ = bars_shelf
    CountingShelf.log = str(tmp_path/'opens.log')
    shelf = CountingShelf(path)
    two, zero = (ShelfDataLoaders.from_shelf(shelf, bs=4, seed=0, num_workers=w, shuffle=False) for w in (2, 0))
    assert two.train.batch_plans() is not None and two.train.fake_l.num_workers == 2
    (tmp_path/'opens.log').write_text('')
    for dl, other in ((two.train, zero.train), (two.valid, zero.valid)):
        a, b = _batches(dl), _batches(other)
        assert len(a) == len(b) == len(dl) > 0
        assert all(torch.equal(u, v) and type(u) == type(v) for x, y in zip(a, b) for u, v in zip(x, y))
    assert (tmp_path/'opens.log').read_text() == ''  # no process opened the shelf: this one's handle read every batch
    assert two.train.fake_l.num_workers == 2  # the setting stands (item-by-item loaders made from it use workers)

@pytest.mark.parametrize('n_workers', [0, 2])
def test_len_matches_batches(bars_shelf, n_workers):
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=5, valid_pct=0.25, seed=0, num_workers=n_workers)
    n_tr = len(dls.train.items)
    for bs in (1, 3, 5, 12, n_tr, n_tr + 5):
        for drop_last in (False, True):
            for shuffle in (False, True):
                dl = dls.train.new(bs=bs, drop_last=drop_last, shuffle=shuffle)
                sizes = [len(b[0]) for b in dl]
                assert len(sizes) == len(dl) == (n_tr // bs if drop_last else -(-n_tr // bs)), (bs, drop_last)
                assert sum(sizes) == (n_tr // bs * bs if drop_last else n_tr)

def test_shuffle_covers_every_item_once(bars_shelf):
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=5, seed=0, num_workers=2)
    dl = dls.train.new(drop_last=False)
    ys = torch.cat([b[1] for b in dl])
    labels = np.stack([open_shelf(path)[k]['labels'] for k in dls.train.items]).astype(np.float32)
    assert len(ys) == len(labels)
    assert sorted(map(tuple, ys.tolist())) == sorted(map(tuple, labels.tolist()))

def test_augmentation_only_on_training_set(bars_shelf):
    path, _ = bars_shelf
    shelf = open_shelf(path)
    inv = AlbumentationsTransform(A.Compose([A.InvertImg(p=1)]))
    dls = ShelfDataLoaders.from_shelf(shelf, bs=4, seed=0, num_workers=0, normalize=False,
                                      item_tfms=inv, shuffle=False)
    xt, _ = dls.train.one_batch(); xv, _ = dls.valid.one_batch()
    # on the batches' device (a GPU where there is one): compared where they are
    raw = lambda keys: torch.from_numpy(np.stack([shelf[k]['image'] for k in keys]))[:, None].to(xt.device).float() / 255
    assert torch.allclose(xt, 1 - raw(dls.train.items[:4]), atol=1e-6)
    assert torch.allclose(xv, raw(dls.valid.items[:4]), atol=1e-6)
    xtest, = dls.test_dl(list(dls.valid.items[:4])).one_batch()
    assert torch.allclose(xtest, raw(dls.valid.items[:4]), atol=1e-6)

def test_xray_recipe_end_to_end_with_workers(bars_shelf):
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=2,
                                      item_tfms=AlbumentationsTransform(xray_augs(56), xray_valid_augs(56)))
    st = open_shelf(path).meta['stats']
    m, s = st['mean'][0], st['std'][0]
    for dl in (dls.train, dls.valid):
        n, lo, hi = 0, [], []
        for x, y in dl:
            assert x.shape[1:] == (1, 56, 56) and x.dtype == torch.float32 and y.shape[1] == 3
            raw = x * s + m  # undone with the shelf's own stats, the pixels are back in 0..1
            assert -1e-4 <= raw.min() and raw.max() <= 1 + 1e-4, (raw.min(), raw.max())
            lo.append(x.min()); hi.append(x.max()); n += len(x)
        assert min(lo) < -0.2 and max(hi) > 1.2  # normalised: not the 0..1 of IntToFloatTensor alone
        assert n == len(dl.items) - (len(dl.items) % 8 if dl.drop_last else 0)

def test_show_batch_predict_get_preds(bars_shelf, tmp_path):
    path, df = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0)
    dls.show_batch(max_n=4, figsize=(5, 5))
    plt.gcf().savefig(tmp_path/'show_batch.png'); plt.close('all')
    assert (tmp_path/'show_batch.png').stat().st_size > 5000
    learn = Learner(dls, tiny_cnn(), loss_func=BCEWithLogitsLossFlat())
    learn.fit(1, 1e-2)
    preds, targs = learn.get_preds()
    assert preds.shape == (len(dls.valid.items), 3) and targs.shape == preds.shape
    k = dls.valid.items[0]
    dec, _, probs = learn.predict(k)
    assert probs.shape == (3,) and all(d in ('a', 'b', 'c') for d in dec)
    _, _, probs_file = learn.predict(path.parent/f'{k}.jpg')  # a new image file, resized as the shelf was built
    assert torch.allclose(probs, probs_file, atol=0.05)

SPAWN = '''
import sys, multiprocessing as mp, torch
from fastai_shelve.data import ShelfDataLoaders
if __name__ == '__main__':
    # imported here, not above: a spawned worker runs the lines above, and one without the transform has no use for albumentations
    from fastai_shelve.augment import AlbumentationsTransform, xray_valid_augs
    before = mp.get_start_method(allow_none=True)
    mp.set_start_method('spawn', force=True)  # what macOS and Windows use, and Python 3.14's default elsewhere
    try:
        for tfm in (None, AlbumentationsTransform(xray_valid_augs(48), xray_valid_augs(48))):
            # one worker: what spawn changes is how the shelf reaches a worker, the same for one as for many
            dls = ShelfDataLoaders.from_shelf(sys.argv[1], bs=5, seed=0, num_workers=1, item_tfms=tfm, shuffle=False)
            ref = dls.train.new(num_workers=0)
            got, want = list(dls.train), list(ref)
            assert len(got) == len(want) == len(dls.train), (len(got), len(want))
            for (x, y), (u, v) in zip(got, want): assert torch.equal(x, u) and torch.equal(y, v)
    finally: mp.set_start_method(before, force=True)  # the process runs other tests' scripts after this one
    print('ok', len(got))
'''

def test_spawned_workers(bars_shelf, tmp_path, other_process):
    "Workers started with spawn get the shelf by pickling (its path, never a handle) and give the same batches."
    path, _ = bars_shelf
    (tmp_path/'spawn.py').write_text(SPAWN)
    # the session's other process starts the workers: it holds no handle of this process's, and has imported fastai already
    r = other_process.run(tmp_path/'spawn.py', path)
    assert r.returncode == 0 and r.stdout.startswith('ok'), r.stderr[-3000:]
