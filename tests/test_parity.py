"fastai parity at the seams a Kaggle user crosses: export and inference without the shelf, item transforms, labels, seeds, masks, DICOM, 16-bit."
import os, sys, json, subprocess, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from torch import nn
from fastai.vision.all import (Learner, ImageDataLoaders, PILImage, PILImageBW, Resize, RandomResizedCrop, FlipItem, set_seed,
                               BCEWithLogitsLossFlat, CrossEntropyLossFlat, Flatten, load_learner, unet_learner, resnet18)
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.splits import GroupSplitter
from fastai_shelve.codec import ShelfError
from conftest import write_bars

def tiny_model(n_out):
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), Flatten(), nn.Linear(64, n_out))

INFER = textwrap.dedent('''
    import sys, json, numpy as np, torch
    from pathlib import Path
    from PIL import Image
    from fastai.vision.all import load_learner, PILImage
    learn = load_learner(sys.argv[1])
    files = [Path(f) for f in sys.argv[2:]]
    out = {}
    out['path'] = [learn.predict(str(f))[2].tolist() for f in files]
    out['pil'] = [learn.predict(PILImage.create(f))[2].tolist() for f in files]
    out['array'] = [learn.predict(np.asarray(Image.open(f)))[2].tolist() for f in files]
    out['tensor'] = [learn.predict(torch.from_numpy(np.asarray(Image.open(f)).copy()))[2].tolist() for f in files]
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    out['test_dl'] = preds.tolist()
    print(json.dumps(out))
''')

def test_export_then_infer_in_a_fresh_process_without_the_shelf(tmp_path, other_process):
    "Kaggle's layout: train and export; then, with the shelf deleted, another process predicts on new PNG files."
    df = write_bars(tmp_path, 40, ext='.png')
    build_shelf(df, tmp_path/'train.shelf', path=tmp_path, suff='.png', label_col=['a', 'b', 'c'], size=(48, 40),
                n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(tmp_path/'train.shelf', bs=8, seed=0)
    learn = Learner(dls, tiny_model(3), loss_func=BCEWithLogitsLossFlat())
    learn.fit(1, 1e-2)
    new = tmp_path/'new'; new.mkdir()
    write_bars(new, 3, seed=7, ext='.png')  # 96x80: resized to the build's 48x40 at predict time, as at build time
    files = sorted(new.glob('*.png'))
    before = [learn.predict(f)[2].tolist() for f in files]
    learn.export(tmp_path/'export.pkl')
    assert (tmp_path/'export.pkl').stat().st_size < 200_000  # the model and the pipeline, no image data
    for p in tmp_path.glob('train.shelf*'): p.unlink()
    (tmp_path/'infer.py').write_text(INFER)
    r = other_process.run(tmp_path/'infer.py', tmp_path/'export.pkl', *files, cwd=tmp_path)  # none of this process's objects
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # `before` ran where the Learner trained; `load_learner` predicts on the CPU: a GPU's float32 convolutions differ a little
    atol = 1e-5 if dls.device.type == 'cpu' else 1e-3
    for kind in ('path', 'pil', 'array', 'tensor', 'test_dl'):
        np.testing.assert_allclose(out[kind], before, atol=atol, err_msg=kind)

@pytest.mark.parametrize('tfm', [Resize(48), RandomResizedCrop(48), FlipItem(p=1.)], ids=['Resize', 'RandomResizedCrop', 'FlipItem'])
def test_fastai_item_transforms_work_as_on_files(tmp_path, tfm):
    "fastai's own item transforms on a shelf kept at full size: the same validation batches as ImageDataLoaders.from_df on the files."
    df = write_bars(tmp_path, 16, ext='.png'); df['fn'] = df.StudyInstanceUID + '.png'
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col=['a', 'b', 'c'],
                n_workers=0, progress=False)  # no resize: the records are the files' pixels
    kw = dict(bs=4, seed=0, item_tfms=tfm, num_workers=0)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', normalize=False, **kw)
    from fastai.vision.all import MultiCategoryBlock
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col=['a', 'b', 'c'], img_cls=PILImageBW,
                                     y_block=MultiCategoryBlock(encoded=True, vocab=['a', 'b', 'c']), **kw)
    assert list(ours.valid.items) == [f[:-4] for f in files.valid.items.fn]
    (xo, yo), (xf, yf) = ours.valid.one_batch(), files.valid.one_batch()
    assert xo.shape == xf.shape and torch.equal(torch.as_tensor(xo), torch.as_tensor(xf)) and torch.equal(torch.as_tensor(yo), torch.as_tensor(yf))
    assert ours.train.one_batch()[0].shape == files.train.one_batch()[0].shape

def test_pil_transforms_on_tensor_items_run_as_on_files(tmp_path):
    "A hand-made DataBlock whose shelf items are tensors: ShelfDL makes them PIL images for fastai's PIL-only Resize, as files are."
    from fastai.data.block import DataBlock
    from fastai.vision.all import ToTensor, TfmdDL
    from fastai_shelve.getters import ShelfImageBlock, ShelfGetter
    from fastai_shelve.fetch import ShelfDL
    from fastai_shelve.store import open_shelf
    df = write_bars(tmp_path, 8, ext='.png')
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.png', size=64, n_workers=0, progress=False)
    shelf = open_shelf(tmp_path/'s.shelf')
    db = DataBlock(blocks=(ShelfImageBlock(),), get_x=ShelfGetter(shelf), item_tfms=Resize(32), dl_type=ShelfDL)
    dl = db.dataloaders(shelf.keys(), bs=4, num_workers=0).valid
    x, = dl.one_batch()
    want = [ToTensor()(Resize(32)(PILImageBW.create(shelf[k]['image']), split_idx=1)) for k in dl.items[:4]]
    assert x.shape[-2:] == (32, 32) and torch.equal(x, torch.stack(want).to(x.device).float() / 255)  # on the batch's device
    assert torch.equal(x, dl.new(cls=TfmdDL).one_batch()[0])

@pytest.mark.parametrize('kind', ['int', 'float', 'bool', 'str'])
def test_labels_vocab_and_decoding_match_from_df(tmp_path, kind):
    "A single label column of each dtype: the same vocab, in the same order, and the same decoded labels as ImageDataLoaders.from_df."
    df = write_bars(tmp_path, 24, ext='.png')
    vals = {'int': [i % 12 for i in range(24)], 'float': [(i % 3) / 2 for i in range(24)], 'bool': [i % 2 == 0 for i in range(24)],
            'str': [f'c{i % 11}' for i in range(24)]}[kind]
    df['y'] = vals; df['fn'] = df.StudyInstanceUID + '.png'
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='y', size=32,
                n_workers=0, progress=False)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, seed=0)
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='y', bs=4, seed=0, img_cls=PILImageBW, item_tfms=Resize(32))
    assert list(ours.vocab) == list(files.vocab), (list(ours.vocab), list(files.vocab))
    kind_of = lambda v: (bool if isinstance(v, (bool, np.bool_)) else int if isinstance(v, (int, np.integer))
                         else float if isinstance(v, (float, np.floating)) else str)  # JSON gives Python scalars, pandas numpy ones
    assert [kind_of(v) for v in ours.vocab] == [kind_of(v) for v in files.vocab]
    _, y = ours.valid.new(shuffle=False, bs=len(ours.valid_ds)).one_batch()
    want = df.set_index('StudyInstanceUID').y[list(ours.valid.items)].tolist()
    assert [ours.vocab[i] for i in y.tolist()] == want

def test_group_splitter_follows_set_seed():
    groups = pd.Series({f'k{i}': f'p{i // 2}' for i in range(40)})
    items = list(groups.index)
    split = lambda: GroupSplitter(groups, 0.25)(items)[1]
    set_seed(1); a = split()
    set_seed(1); b = split()
    set_seed(2); c = split()
    assert list(a) == list(b) and list(a) != list(c)
    assert list(GroupSplitter(groups, 0.25, seed=5)(items)[1]) == list(GroupSplitter(groups, 0.25, seed=5)(items)[1])

def test_masks_from_files_to_a_unet(tmp_path):
    "build_shelf reads masks beside the images (resized with nearest neighbour); unet_learner infers its loss; show_batch draws."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    (tmp_path/'img').mkdir(); (tmp_path/'msk').mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        m = np.zeros((96, 80), np.uint8); m[10 + 3*i:40 + 3*i, 20:60] = 1; m[60:70, 5:15] = 2
        Image.fromarray((m * 100 + rng.integers(0, 20, m.shape)).astype(np.uint8)).save(tmp_path/'img'/f'k{i:02d}.png')
        Image.fromarray(m).save(tmp_path/'msk'/f'k{i:02d}_mask.png')
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path/'msk'/'k11_mask.png')  # a mask of another size: reported
    df = pd.DataFrame({'id': [f'k{i:02d}' for i in range(12)]})
    # 32 pixels: the smallest a resnet's unet takes (it halves 5 times); the masks' regions still cover several pixels
    r = build_shelf(df, tmp_path/'seg.shelf', path=tmp_path/'img', suff='.png', size=32, mask_path=tmp_path/'msk',
                    mask_suffix='_mask.png', codes=['background', 'tube', 'marker'], n_workers=0, progress=False)
    assert r.written == 11 and [b[0] for b in r.bad] == ['k11'] and 'mask' in r.bad[0][2]
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'seg.shelf') as s:
        rec = s['k03']
        assert rec['mask'].shape == rec['image'].shape == (32, 32) and set(np.unique(rec['mask'])) == {0, 1, 2}
        assert s.meta['codes'] == ['background', 'tube', 'marker']
    dls = ShelfDataLoaders.from_shelf(tmp_path/'seg.shelf', y='mask', bs=4, seed=0, valid_pct=0.25)
    learn = unet_learner(dls, resnet18, n_in=1, n_out=3, pretrained=False)
    assert isinstance(learn.loss_func, CrossEntropyLossFlat) and learn.loss_func.axis == 1
    learn.fit(1, 1e-3)
    dls.show_batch(max_n=4); plt.savefig(tmp_path/'seg_batch.png'); plt.close('all')
    learn.show_results(max_n=2); plt.savefig(tmp_path/'seg_results.png'); plt.close('all')
    assert (tmp_path/'seg_batch.png').stat().st_size > 5000 and (tmp_path/'seg_results.png').stat().st_size > 5000

def test_dicom_as_radiology_reads_it(tmp_path):
    "pydicom's own test files: colour, palette, multi-frame with `frame=`, compressed; files that can't be read say why."
    pydicom = pytest.importorskip('pydicom')
    from pydicom.data import get_testdata_file
    from fastai_shelve.images import load_image
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rgb2 = get_testdata_file('SC_rgb_rle_2frame.dcm')
        f0, f1 = load_image(rgb2, size=32, frame=0), load_image(rgb2, size=32, frame=1)
        assert f0.shape == (32, 32) and f0.dtype == np.uint8 and not np.array_equal(f0, f1)
        assert load_image(rgb2, size=32, gray=False).shape == (32, 32, 3)
        with pytest.raises(ShelfError, match='has 2 frames'): load_image(rgb2, frame=5)
        assert load_image(get_testdata_file('examples_palette.dcm'), size=32).std() > 5
        j2k = load_image(get_testdata_file('JPEG2000.dcm'), size=32)  # needs pylibjpeg-openjpeg (the dicom extra)
        assert j2k.std() > 5
        ct = load_image(get_testdata_file('CT_small.dcm'), size=32)
        assert ct.min() < 30 and ct.max() > 200  # the window's range kept
    # MONOCHROME1: bright means low values; read as MONOCHROME2 shows it
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid, SecondaryCaptureImageStorage
    px = np.tile(np.arange(0, 4000, 40, dtype=np.uint16), (20, 1))
    for pi in ('MONOCHROME1', 'MONOCHROME2'):
        ds = Dataset(); ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID, ds.file_meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(); ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 20, 100, 1, pi
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PixelData = 16, 12, 11, 0, px.tobytes()
        ds.save_as(tmp_path/f'{pi}.dcm', enforce_file_format=True)
    m1, m2 = load_image(tmp_path/'MONOCHROME1.dcm'), load_image(tmp_path/'MONOCHROME2.dcm')
    np.testing.assert_array_equal(m1, 255 - m2)
    assert len(np.unique(m2)) == 100  # a 12-bit ramp keeps its 100 levels
    # In a build, a file that cannot be read is a bad record whose reason says what is missing: with the dicom extra
    # a 12-bit JPEG DICOM reads; in a process where its plugins cannot be imported (not installed) it is a bad record.
    shutil = __import__('shutil')
    files = [tmp_path/f for f in ('JPGExtended.dcm', 'CT_small.dcm')]
    for f in files: shutil.copy(get_testdata_file(f.name), f)
    r = build_shelf(files, tmp_path/'d.shelf', size=32, n_workers=0, progress=False)
    assert (r.written, r.bad) == (2, [])
    r = subprocess.run([sys.executable, '-c', NO_DICOM_PLUGINS, *map(str, files), str(tmp_path/'e.shelf')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = json.loads(r.stdout.strip().splitlines()[-1])
    assert r['written'] == 1 and [b[0] for b in r['bad']] == ['JPGExtended'] and 'pylibjpeg' in r['bad'][0][2], r

NO_DICOM_PLUGINS = textwrap.dedent('''
    import sys, json
    for m in ('pylibjpeg', 'libjpeg', 'openjpeg'): sys.modules[m] = None  # their import fails, as if not installed
    from fastai_shelve.build import build_shelf
    r = build_shelf(sys.argv[1:-1], sys.argv[-1], size=32, n_workers=0, progress=False)
    print(json.dumps(dict(written=r.written, bad=r.bad)))
''')

def test_16_bit_and_float_inputs_keep_their_range(tmp_path):
    from fastai_shelve.images import load_image
    Image.fromarray(np.tile(np.arange(0, 300, 3, dtype=np.uint16), (10, 1))).save(tmp_path/'low.png')  # 0..297 in 16 bits
    Image.fromarray(np.tile(np.linspace(0, 1, 100, dtype=np.float32), (10, 1))).save(tmp_path/'unit.tiff')  # float in 0..1
    for f in ('low.png', 'unit.tiff'):
        a = load_image(tmp_path/f)
        assert a.min() == 0 and a.max() == 255 and len(np.unique(a)) == 100, (f, len(np.unique(a)))
    p = load_image(tmp_path/'unit.tiff', scale='percentile')
    assert p.min() == 0 and p.max() == 255

def test_your_normalize_is_kept_as_on_files(tmp_path):
    "A `Normalize` in `batch_tfms` is the user's, as `ImageDataLoaders.from_df` keeps it: the shelf adds none of its own."
    from fastai.vision.all import Normalize
    df = write_bars(tmp_path, 16, ext='.png')
    df['fn'], df['is_valid'] = df.StudyInstanceUID + '.png', [i % 4 == 0 for i in range(16)]
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='a', size=(96, 80),
                valid_col='is_valid', n_workers=0, progress=False)  # the files' own size: no resize on either side
    mine = lambda: Normalize.from_stats([0.5], [0.2], cuda=False)
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='a', valid_col='is_valid', bs=4, img_cls=PILImageBW,
                                     batch_tfms=mine(), device='cpu')
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, batch_tfms=mine(), device='cpu')
    byrows = ShelfDataLoaders.from_df(df, tmp_path/'s.shelf', tmp_path, fn_col='StudyInstanceUID', label_col='a', valid_col='is_valid',
                                      bs=4, batch_tfms=mine(), device='cpu')
    want = files.valid.one_batch()[0]
    for dls in (ours, byrows):
        (n,) = [f for f in dls.after_batch.fs if isinstance(f, Normalize)]
        assert (n.mean.item(), n.std.item()) == pytest.approx((0.5, 0.2))
        assert torch.equal(dls.valid.one_batch()[0], want)
    with pytest.raises(ShelfError, match="Normalize and normalize=True"):
        ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, batch_tfms=mine(), normalize=True)
    # The class itself, which fastai instantiates (its statistics then come from a batch): yours too, not the shelf's
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'s.shelf') as s: shelf_mean = s.meta.stats['mean']
    (n,) = [f for f in ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, batch_tfms=Normalize).after_batch.fs if isinstance(f, Normalize)]
    assert n.mean.flatten().tolist() != pytest.approx(shelf_mean)

def test_a_vocab_given_to_the_build_is_the_model_s_as_on_files(tmp_path):
    "`build_shelf(..., y_block=CategoryBlock(vocab=V))`: `from_shelf` keeps V (a class only in validation too), as fastai on the files."
    from fastai.vision.all import CategoryBlock
    df = write_bars(tmp_path, 12, ext='.png')
    df['fn'], df['is_valid'] = df.StudyInstanceUID + '.png', [i >= 9 for i in range(12)]
    df['y'] = ['a', 'b'] * 4 + ['a', 'rare', 'a', 'b']
    V = ['rare', 'b', 'a']
    kw = dict(path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='y', size=32, valid_col='is_valid', n_workers=0, progress=False)
    build_shelf(df, tmp_path/'s.shelf', **kw, y_block=CategoryBlock(vocab=V))
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='y', valid_col='is_valid', bs=4, img_cls=PILImageBW,
                                     item_tfms=Resize(32), y_block=CategoryBlock(vocab=V), device='cpu', shuffle=False)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, device='cpu')
    assert list(ours.vocab) == list(files.vocab) == ['a', 'b', 'rare'] and ours.c == files.c == 3
    assert torch.equal(torch.cat([y for _, y in ours.valid]), torch.cat([y for _, y in files.valid]))  # 'rare' is a class, not a KeyError
    build_shelf(df, tmp_path/'s.shelf', **kw)  # the cell run again without the vocab: what a fresh build without it gives
    assert list(ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, device='cpu').vocab) == ['a', 'b']
    # The block's options, at the build and at from_shelf, as fastai's block applies them on the files
    for i, (at_build, at_load) in enumerate([(dict(sort=False), {}), (dict(add_na=True), {}), ({}, dict(add_na=True))]):
        build_shelf(df, tmp_path/f'o{i}.shelf', **kw, y_block=CategoryBlock(vocab=V, **at_build))
        files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='y', valid_col='is_valid', bs=4, img_cls=PILImageBW,
                                         item_tfms=Resize(32), y_block=CategoryBlock(vocab=V, **at_build, **at_load), device='cpu')
        ours = ShelfDataLoaders.from_shelf(tmp_path/f'o{i}.shelf', bs=4, device='cpu', y_block=CategoryBlock(**at_load) if at_load else None)
        assert list(ours.vocab) == list(files.vocab), (at_build, at_load)

def test_vocab_is_the_training_splits_as_in_fastai(tmp_path):
    "A category seen only in validation is not in the vocab, as fastai's `Categorize` learns it from the training split."
    df = write_bars(tmp_path, 12, ext='.png')
    df['fn'], df['is_valid'] = df.StudyInstanceUID + '.png', [i >= 9 for i in range(12)]
    df['y'] = ['a', 'b'] * 4 + ['a', 'rare', 'a', 'b']  # 'rare': one validation row
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='y', size=32,
                valid_col='is_valid', n_workers=0, progress=False)
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='y', valid_col='is_valid', bs=4, img_cls=PILImageBW,
                                     item_tfms=Resize(32), device='cpu')
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, device='cpu')
    assert list(ours.vocab) == list(files.vocab) == ['a', 'b'] and ours.c == files.c == 2
    for dls in (files, ours):  # the validation row with 'rare' fails as fastai fails on it
        with pytest.raises(KeyError, match="'rare' was not included in the training dataset"): list(dls.valid)
    # Given a vocab, it is the vocab, as `CategoryBlock(vocab=)`'s
    assert list(ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, vocab=['rare', 'b', 'a']).vocab) == ['a', 'b', 'rare']
    # The labels are read a chunk at a time until every category has come: the rest cannot change the vocab
    from fastai_shelve.getters import CategoryLabel
    from fastai_shelve.store import open_shelf
    with open_shelf(tmp_path/'s.shelf') as s:
        get, keys = CategoryLabel(s, ['a', 'b', 'rare']), df.StudyInstanceUID.tolist()
        assert get.values(keys, n=2) == df.y.tolist() and get.values(keys, n=2, every=['a', 'b']) == ['a', 'b']
    # The block's own options shape the learned vocab, as on files
    from fastai.vision.all import CategoryBlock
    for mk in (lambda: CategoryBlock(add_na=True), lambda: CategoryBlock(sort=False)):  # fresh: fastai's setups sets a block's vocab
        blk = mk()
        f = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='y', valid_col='is_valid', bs=4, img_cls=PILImageBW,
                                     item_tfms=Resize(32), y_block=blk, device='cpu')
        assert list(ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, y_block=mk()).vocab) == list(f.vocab)
        # Given to the build alone, as the files' block is given once: the shelf keeps them for from_shelf
        build_shelf(df, tmp_path/'b.shelf', path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='y', size=32,
                    valid_col='is_valid', n_workers=0, progress=False, y_block=mk())
        assert list(ShelfDataLoaders.from_shelf(tmp_path/'b.shelf', bs=4).vocab) == list(f.vocab)

@pytest.mark.parametrize('n_workers', [0, 2])
def test_tag_vocab_is_the_training_splits_as_in_fastai(tmp_path, n_workers):
    "Tags: a tag seen only in validation is no output of the model, and its row fails there, as fastai's `MultiCategorize` on files."
    df = write_bars(tmp_path, 12, ext='.png')
    df['fn'], df['is_valid'] = df.StudyInstanceUID + '.png', [i >= 9 for i in range(12)]
    df['tags'] = ['a b', 'b', 'a', 'b c'] * 2 + ['a', 'c zz', 'b', 'a']  # 'zz': in one validation row only
    kw = dict(path=tmp_path, fn_col='StudyInstanceUID', suff='.png', label_col='tags', label_delim=' ', size=32, valid_col='is_valid',
              n_workers=0, progress=False)
    build_shelf(df, tmp_path/'s.shelf', **kw)
    files = ImageDataLoaders.from_df(df, tmp_path, fn_col='fn', label_col='tags', label_delim=' ', valid_col='is_valid', bs=4,
                                     img_cls=PILImageBW, item_tfms=Resize(32), device='cpu', num_workers=n_workers)
    ours = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', bs=4, device='cpu', num_workers=n_workers)
    assert list(ours.vocab) == list(files.vocab) == ['a', 'b', 'c'] and ours.c == files.c == 3
    ys = lambda dls: torch.cat([y for _, y in dls.train.new(shuffle=False, drop_last=False)])
    assert torch.equal(ys(ours), ys(files))  # the training targets, column for column
    assert all(y.is_contiguous() for _, y in ours.train)  # the vocab's columns picked out, laid out as fastai's
    for dls in (files, ours):  # the validation row with 'zz' fails as fastai fails on it
        with pytest.raises(KeyError, match="'zz' were not included in the training dataset"): list(dls.valid)
    rows = df[df.is_valid & (df.tags != 'c zz')]  # the other validation rows: the same targets as fastai's
    assert torch.equal(ours.test_dl(rows, with_labels=True).one_batch()[1], files.test_dl(rows, with_labels=True).one_batch()[1])
    # A vocab given to the build is the model's, as `MultiCategoryBlock(vocab=)` keeps it: 'zz' an output, and no error
    build_shelf(df, tmp_path/'v.shelf', **kw, vocab=['a', 'b', 'c', 'zz'])
    given = ShelfDataLoaders.from_shelf(tmp_path/'v.shelf', bs=4, device='cpu', num_workers=n_workers)
    assert list(given.vocab) == ['a', 'b', 'c', 'zz'] and given.c == 4 and len(torch.cat([y for _, y in given.valid])) == 3
