"Gray from colour JPEGs is fastai's `PILImageBW` (PIL's RGB -> L), in the build and at predict time on paths, PIL images and arrays."
import pickle
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from torch import nn
from skimage import data
from fastai.vision.all import ImageDataLoaders, Learner, PILImage, PILImageBW, Resize, CrossEntropyLossFlat, Flatten
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.images import BuildSettings, load_image
from fastai_shelve.store import open_shelf
from fastai_shelve.codec import ShelfError

def colour_jpegs(folder, n=6):
    "`n` colour JPEGs with real chroma (crops of scikit-image's astronaut and cat, 200x160), and their DataFrame."
    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        src = data.astronaut() if i % 2 else data.chelsea()
        y, x = rng.integers(0, src.shape[0] - 200), rng.integers(0, src.shape[1] - 160)
        Image.fromarray(src[y:y+200, x:x+160]).save(folder/f'c{i}.jpg', quality=90)
        rows.append(dict(fn=f'c{i}', y=f'k{i % 2}', is_valid=i % 3 == 0))
    return pd.DataFrame(rows)

def luma_differs(fn) -> bool:
    "Does the decoder's own luma (what a draft('L') decode gives) differ from PIL's RGB -> L for `fn`? (so a test can fail)"
    with Image.open(fn) as im: im.draft('L', None); im.load(); luma = np.asarray(im)
    return not np.array_equal(luma, np.asarray(PILImageBW.create(fn)))

def test_colour_jpeg_records_equal_pilimagebw(tmp_path):
    "Built at native size, each record is `PILImageBW.create(file)`'s pixels; a 1-channel JPEG's too."
    df = colour_jpegs(tmp_path)
    Image.fromarray(data.camera()[:200, :160]).save(tmp_path/'g.jpg')  # 1-channel: the decoder's own gray, exact
    df = pd.concat([df, pd.DataFrame([dict(fn='g', y='k0', is_valid=False)])], ignore_index=True)
    assert luma_differs(tmp_path/'c0.jpg')
    build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.jpg', label_col='y', n_workers=0, progress=False)
    with open_shelf(tmp_path/'s.shelf') as s:
        for k in df.fn: np.testing.assert_array_equal(s[k]['image'], np.asarray(PILImageBW.create(tmp_path/f'{k}.jpg')), err_msg=k)
    for k in df.fn: np.testing.assert_array_equal(load_image(tmp_path/f'{k}.jpg'), np.asarray(PILImageBW.create(tmp_path/f'{k}.jpg')))

def test_colour_jpeg_batches_equal_from_df_with_resize(tmp_path):
    "Through fastai's `Resize(32)` on both sides: the validation batch equals `ImageDataLoaders.from_df(img_cls=PILImageBW)`'s."
    df = colour_jpegs(tmp_path)
    build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.jpg', label_col='y', valid_col='is_valid',
                n_workers=0, progress=False)
    kw = dict(bs=2, item_tfms=Resize(32), num_workers=0)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', normalize=False, **kw)
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', suff='.jpg', label_col='y', valid_col='is_valid',
                                     img_cls=PILImageBW, **kw)
    assert list(ours.valid.items) == list(files.valid.items.fn)
    for (xo, yo), (xf, yf) in zip(ours.valid, files.valid):
        assert torch.equal(torch.as_tensor(xo), torch.as_tensor(xf)) and torch.equal(torch.as_tensor(yo), torch.as_tensor(yf))

def test_gray_shelf_at_a_size_is_the_rgb_shelfs_gray(tmp_path):
    "With the decoder's DCT scaling (size 48 from 200x160: 1/2), a gray record is PIL's RGB -> L of the RGB record, within rounding."
    df = colour_jpegs(tmp_path)
    kw = dict(path=tmp_path, fn_col='fn', suff='.jpg', size=48, n_workers=0, progress=False)
    build_shelf(df, tmp_path/'g.shelf', **kw)
    build_shelf(df, tmp_path/'c.shelf', img_cls=PILImage, **kw)
    with open_shelf(tmp_path/'g.shelf') as g, open_shelf(tmp_path/'c.shelf') as c:
        for k in df.fn:
            want = np.asarray(Image.fromarray(c[k]['image']).convert('L')).astype(int)
            assert np.abs(g[k]['image'].astype(int) - want).max() <= 1, k  # the decoder's luma: up to 18 levels off

@pytest.fixture
def learn(tmp_path):
    "A tiny Learner on a gray shelf of colour JPEGs, built at 128x96 (no DCT scaling from 200x160)."
    df = colour_jpegs(tmp_path)
    build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.jpg', label_col='y', size=(128, 96),
                n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=2, seed=0, num_workers=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), Flatten(), nn.Linear(64, 2))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat()), tmp_path

def test_predict_prepares_a_path_a_pil_image_and_an_array_alike(learn):
    "The getter prepares a path, `PILImage.create(path)` and its array to the same pixels, the file's `PILImageBW` resized."
    learn, tmp = learn
    dl = learn.dls.test_dl([tmp/'c1.jpg', PILImage.create(tmp/'c1.jpg'), np.asarray(PILImage.create(tmp/'c1.jpg'))], bs=3)
    x, = dl.one_batch()
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    with open_shelf(tmp/'s.shelf') as s: settings = BuildSettings.from_meta(s.meta['build'])
    fn = tmp/'c1.jpg'
    want = settings.prepare(np.asarray(PILImageBW.create(fn)))  # the file as fastai reads it, resized as the build resizes
    np.testing.assert_array_equal(settings.load(fn), want)
    for o in (PILImage.create(fn), np.asarray(PILImage.create(fn))): np.testing.assert_array_equal(settings.prepare(o), want)
    p, q = learn.predict(tmp/'c1.jpg')[2], learn.predict(PILImage.create(tmp/'c1.jpg'))[2]
    assert torch.equal(p, q)

def test_old_shelves_and_exports_keep_the_decoders_luma(tmp_path):
    "Schema-2 settings (from a shelf's metadata or an old pickle) decode colour JPEGs as their builds did: the decoder's luma."
    colour_jpegs(tmp_path, 1)
    old = BuildSettings.from_meta(dict(schema=2, size=None, shortest_side=None, max_side=None, gray=True, scale='minmax', frame=0))
    with Image.open(tmp_path/'c0.jpg') as im: im.draft('L', None); im.load(); luma = np.asarray(im)
    np.testing.assert_array_equal(old.load(tmp_path/'c0.jpg'), luma)
    assert old.as_meta()['schema'] == 2 and old != BuildSettings() and BuildSettings().as_meta()['schema'] == 3
    s = BuildSettings(); state = {k: v for k,v in s.__dict__.items() if k != 'jpeg_luma'}  # as pickled before it existed
    was = BuildSettings.__new__(BuildSettings); was.__setstate__(state)
    assert was.jpeg_luma and not pickle.loads(pickle.dumps(s)).jpeg_luma
    assert not BuildSettings.from_meta(dict(schema=2, gray=False)).jpeg_luma  # RGB shelves: the same decode then and now

@pytest.mark.parametrize('frame', ['foo', 1.5, True, None])
def test_frame_must_be_an_index_or_all(frame):
    with pytest.raises(ShelfError, match="frame must be a frame index"): BuildSettings(frame=frame)
    assert BuildSettings(frame=-1).frame == -1 and BuildSettings(frame='all').frame == 'all' and BuildSettings(frame=np.int64(2))
