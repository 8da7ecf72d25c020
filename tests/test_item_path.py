"The whole-batch path is an opt-in: any item transform without a batch version goes item by item, bit-equal to fastai on files."
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, DataBlock, ImageBlock, MaskBlock, MultiCategoryBlock, RandomSplitter, PILImageBW,
                               Transform, ItemTransform, TensorImage, TensorCategory, TensorMultiCategory, TensorMask, TfmdDL)
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.fetch import batch_fn, needs_pil
from conftest import write_bars

class OnImage(Transform):
    "Typed on images, after `ToTensor`: fastai runs it on files."
    order = 10
    def encodes(self, x:TensorImage): return 255 - x

class OnImageEarly(Transform):
    "Typed on images, before `ToTensor`: on files fastai hands it PIL images, so it does nothing."
    def encodes(self, x:TensorImage): return 255 - x

class OnCategory(Transform):
    def encodes(self, x:TensorCategory): return x * 0 + 1

class OnMultiCategory(Transform):
    def encodes(self, x:TensorMultiCategory): return x * 0

class OnMask(Transform):
    order = 10
    def encodes(self, x:TensorMask): return x.flip(-1)

def plain(x): return x.as_subclass(torch.Tensor)

def assert_same_batches(ours, files, n_parts=2):
    "Every batch of `ours` equals `files`' bit for bit, of the same fastai types (ours may be a subclass: `TensorImageGray`)."
    a, b = list(ours), list(files)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert len(x) == len(y) == n_parts
        for u, v in zip(x, y): assert isinstance(u, type(v)) and u.shape == v.shape and torch.equal(plain(u), plain(v)), (type(u), type(v))
    return a

def pairs(ours, files):
    "(ours, files) for the training set in order and the validation set."
    return [(ours.train.new(shuffle=False, drop_last=False), files.train.new(shuffle=False, drop_last=False)), (ours.valid, files.valid)]

@pytest.fixture(scope='module')
def bars_png(tmp_path_factory):
    "12 bars PNGs, a label table (three 0/1 columns and a category) and two shelves of them at full size."
    tmp = tmp_path_factory.mktemp('bars')
    df = write_bars(tmp, 12, ext='.png')
    df['fn'] = df.StudyInstanceUID + '.png'
    df['y'] = [f'c{i % 3}' for i in range(len(df))]
    kw = dict(path=tmp, fn_col='StudyInstanceUID', suff='.png', n_workers=0, progress=False)
    build_shelf(df, tmp/'multi.shelf', label_col=['a', 'b', 'c'], **kw)
    build_shelf(df, tmp/'cat.shelf', label_col='y', **kw)
    return tmp, df

@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('tfm', [OnImage, OnImageEarly, OnMultiCategory])
def test_multi_label_item_transforms_equal_fastai(bars_png, tfm, workers):
    tmp, df = bars_png
    kw = dict(bs=4, seed=0, item_tfms=tfm(), num_workers=workers)
    ours = ShelfDataLoaders.from_shelf(tmp/'multi.shelf', normalize=False, **kw)
    files = ImageDataLoaders.from_df(df, tmp, fn_col='fn', label_col=['a', 'b', 'c'], img_cls=PILImageBW,
                                     y_block=MultiCategoryBlock(encoded=True, vocab=['a', 'b', 'c']), **kw)
    assert ours.train.batch_plans() is None  # no batch version: item by item
    for o, f in pairs(ours, files):
        got = assert_same_batches(o, f)
        if tfm is OnMultiCategory: assert all(y.sum() == 0 for _, y in got)  # the labels were zeroed, as fastai zeroes them
    if tfm is OnImageEarly:  # before ToTensor it sees PIL images, on the shelf as on files: the pixels are the files' own
        x = ours.valid.one_batch()[0]
        want = torch.stack([torch.from_numpy(np.array(Image.open(tmp/f'{k}.png')))[None] for k in ours.valid.items[:len(x)]])
        assert torch.equal(plain(x), want.to(x.device).float() / 255)  # on the batch's device (a GPU where there is one)

@pytest.mark.parametrize('workers', [0, 2])
def test_category_item_transform_equals_fastai(bars_png, workers):
    tmp, df = bars_png
    kw = dict(bs=4, seed=0, item_tfms=OnCategory(), num_workers=workers)
    ours = ShelfDataLoaders.from_shelf(tmp/'cat.shelf', normalize=False, **kw)
    files = ImageDataLoaders.from_df(df, tmp, fn_col='fn', label_col='y', img_cls=PILImageBW, **kw)
    assert list(ours.vocab) == list(files.vocab)
    for o, f in pairs(ours, files):
        assert all((y == 1).all() for _, y in assert_same_batches(o, f))

@pytest.mark.parametrize('workers', [0, 2])
def test_mask_item_transform_equals_fastai(tmp_path, workers):
    (tmp_path/'img').mkdir(); (tmp_path/'msk').mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        m = np.zeros((40, 48), np.uint8); m[5 + 2*i:20 + 2*i, 4:20] = 1; m[30:36, 30:44] = 2
        Image.fromarray((m * 90 + rng.integers(0, 30, m.shape)).astype(np.uint8)).save(tmp_path/'img'/f'k{i:02d}.png')
        Image.fromarray(m).save(tmp_path/'msk'/f'k{i:02d}_mask.png')
    df = pd.DataFrame({'id': [f'k{i:02d}' for i in range(10)]})
    codes = ['background', 'tube', 'marker']
    build_shelf(df, tmp_path/'seg.shelf', path=tmp_path/'img', suff='.png', mask_path=tmp_path/'msk', mask_suffix='_mask.png',
                codes=codes, n_workers=0, progress=False)
    kw = dict(bs=4, item_tfms=OnMask(), num_workers=workers)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'seg.shelf', y='mask', seed=0, valid_pct=0.2, normalize=False, **kw)
    files = DataBlock(blocks=(ImageBlock(cls=PILImageBW), MaskBlock(codes)), splitter=RandomSplitter(0.2, seed=0),
                      get_x=lambda k: tmp_path/'img'/f'{k}.png', get_y=lambda k: tmp_path/'msk'/f'{k}_mask.png',
                      item_tfms=OnMask()).dataloaders(list(df.id), **kw)
    assert list(ours.valid.items) == list(files.valid.items)
    for o, f in pairs(ours, files):
        for x, y in assert_same_batches(o, f):
            assert (y[..., 4:18] == 2).any() and not (y[..., 30:44] == 2).any()  # flipped: the marker is now on the left

class InvertBatch(Transform):
    "An item transform that says it can run on a whole batch: `encodes_batch` gets each part of the batch."
    order = 10
    def encodes(self, x:TensorImage): return 255 - x
    def encodes_batch(self, o): return 255 - o if isinstance(o, TensorImage) else o

class InvertItems(InvertBatch):
    encodes_batch = None  # a subclass that opts out

def test_declared_batch_versions_run_whole_and_equal_fastai(bars_png):
    tmp, df = bars_png
    for tfm, whole in ((InvertBatch(), True), (InvertItems(), False)):
        kw = dict(bs=4, seed=0, item_tfms=tfm, num_workers=0)
        ours = ShelfDataLoaders.from_shelf(tmp/'multi.shelf', normalize=False, **kw)
        files = ImageDataLoaders.from_df(df, tmp, fn_col='fn', label_col=['a', 'b', 'c'], img_cls=PILImageBW,
                                         y_block=MultiCategoryBlock(encoded=True, vocab=['a', 'b', 'c']), **kw)
        assert (ours.valid.batch_plans() is not None) == whole and needs_pil(tfm) != whole
        for o, f in pairs(ours, files): assert_same_batches(o, f)

def test_batch_fn_is_declared_never_guessed():
    from fastai.vision.all import ToTensor, AddMaskCodes, Resize, FlipItem
    from fastai_shelve.augment import AlbumentationsTransform
    import albumentations as A
    assert batch_fn(ToTensor()) is not None and batch_fn(AddMaskCodes()) is not None  # leave tensors as they are
    untyped = Transform(lambda o: o)
    for f in (Resize(8), FlipItem(), OnImage(), OnCategory(), OnMultiCategory(), OnMask(), untyped,
              AlbumentationsTransform(A.Compose([]))):
        assert batch_fn(f) is None and needs_pil(f), f
    train_only = InvertBatch(); train_only.split_idx = 0
    assert batch_fn(train_only) is None  # runs on one split: fastai decides per call
