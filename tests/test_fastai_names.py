"""fastai's names and meanings: regression and tag targets as `ImageDataLoaders.from_df` makes them, predict and test_dl on
any shelf DataLoaders, normalisation as fastai's `vision_learner` does it, a shelf kept usable across `with` blocks and rebuilds."""
import sys, subprocess, warnings, numpy as np, pandas as pd, pytest, torch
from pathlib import Path
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, RegressionBlock, CategoryBlock, MultiCategoryBlock, PILImageBW, PILImage,
                               TfmdDL, Normalize, vision_learner, resnet18, model_meta, imagenet_stats, set_seed)
from fastai_shelve.codec import ShelfError
from fastai_shelve.store import open_shelf
from fastai_shelve.info import shelf_info
from fastai_shelve.build import build_shelf
from fastai.learner import load_learner
from fastai_shelve.data import ShelfDataLoaders, shelf_dblock
from fastai_shelve.cli import main
from conftest import write_bars

def _by_key(dl, keys):
    "{key: (x, y)} of a fastai dataset, for comparing two loaders whatever their order."
    return {k: dl.dataset[i] for i,k in enumerate(keys)}

@pytest.fixture
def ages(tmp_path):
    "24 gray PNGs whose target is the share of bright bars (a float) and a second float, with a validation column."
    df = write_bars(tmp_path, 24, ext='.png')
    df['age'] = (df[['a', 'b', 'c']].sum(axis=1) / 3 + np.arange(24) / 1000).astype(float)
    df['weight'] = np.linspace(-1, 1, 24)
    df['is_valid'] = np.arange(24) % 4 == 0
    return tmp_path, df

def test_regression_as_fastai_from_df(ages):
    "y_block=RegressionBlock: float targets, c and MSELossFlat as fastai infers them, equal to `from_df` on the files."
    path, df = ages
    build_shelf(df, path/'age.shelf', path, fn_col='StudyInstanceUID', suff='.png', label_col='age', y_block=RegressionBlock,
                valid_col='is_valid', img_cls=PILImageBW, n_workers=0, progress=False)
    with open_shelf(path/'age.shelf') as s:
        assert s.meta['label_kind'] == 'regression' and s['id0001']['labels'].dtype == np.float32
    dls = ShelfDataLoaders.from_shelf(path/'age.shelf', bs=5, normalize=False)
    ref = ImageDataLoaders.from_df(df, path, fn_col='StudyInstanceUID', suff='.png', label_col='age', y_block=RegressionBlock,
                                   valid_col='is_valid', img_cls=PILImageBW, bs=5, num_workers=0)
    assert dls.c == ref.c == 1
    assert sorted(dls.valid.items) == sorted(ref.valid.items.StudyInstanceUID)  # the build's valid_col splits
    ours, theirs = _by_key(dls.valid, dls.valid.items), _by_key(ref.valid, list(ref.valid.items.StudyInstanceUID))
    for k,(x, y) in ours.items():
        u, v = theirs[k]
        assert y.dtype == v.dtype == torch.float32 and y.shape == v.shape == () and torch.equal(y, v), (k, y, v)
    xb, yb = dls.train.one_batch()
    assert yb.shape == (5,) and yb.dtype == torch.float32
    learn = vision_learner(dls, resnet18, n_in=1, pretrained=False)
    assert isinstance(learn.loss_func.func, torch.nn.MSELoss) and learn.model[-1][-1].out_features == 1

def test_two_float_columns_whole_batch_equals_fastai(ages):
    "Several float columns: c = 2, (bs, 2) targets, and the whole-batch path gives what fastai's TfmdDL gives."
    path, df = ages
    build_shelf(df, path/'two.shelf', path, suff='.png', label_col=['age', 'weight'], y_block=RegressionBlock(n_out=2),
                size=32, n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(path/'two.shelf', bs=6, seed=0)
    assert dls.c == 2
    dl = dls.train.new(shuffle=False, drop_last=False)
    assert dl.batch_plans() is not None
    for (x, y), (u, v) in zip(dl, dl.new(cls=TfmdDL)):
        assert y.shape[1] == 2 and torch.equal(x, u) and torch.equal(y, v) and type(y) == type(v)
    want = df.set_index('StudyInstanceUID').loc[list(dl.items[:6]), ['age', 'weight']].to_numpy(np.float32)
    assert np.array_equal(next(iter(dl))[1].cpu().numpy(), want)

EXPORTED = '''
import sys, json
from pathlib import Path
from fastai.learner import load_learner
learn = load_learner(sys.argv[1])
out = {}
for name, item in (('path', Path(sys.argv[2])), ('str', sys.argv[2])):
    dec, pred, _ = learn.predict(item)
    out[name] = [float(v) for v in pred.reshape(-1)]
try: learn.predict(sys.argv[3])
except FileNotFoundError as e: out['missing'] = str(e)
print(json.dumps(out))
'''

def test_regression_predicts_a_number_after_export_without_shelf(ages, other_process):
    "A regression Learner exported, the shelf deleted, loaded in another process: predict gives a float; a typo is a missing file."
    set_seed(0)
    path, df = ages
    build_shelf(df, path/'age.shelf', path, suff='.png', label_col='age', y_block=RegressionBlock, size=32, n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(path/'age.shelf', bs=8, seed=0)
    learn = vision_learner(dls, resnet18, n_in=1, pretrained=False)
    learn.fit(1, 1e-3)
    dec, pred, _ = learn.predict(str(path/'id0003.png'))
    assert pred.dtype == torch.float32 and pred.numel() == 1 and not isinstance(dec, str)
    learn.export(path/'age.pkl')
    for f in path.glob('age.shelf*'): f.unlink()
    (path/'run.py').write_text(EXPORTED)
    r = other_process.run(path/'run.py', path/'age.pkl', path/'id0003.png', path/'id0003.pgn')  # none of this process's objects
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    out = json.loads(r.stdout.strip().splitlines()[-1][r.stdout.strip().splitlines()[-1].index('{'):])  # after predict's progress bar
    assert out['path'] == out['str'] and len(out['path']) == 1 and np.isfinite(out['path'][0])
    # the same number as before export, with no shelf anywhere: `pred` came from the training device, `load_learner` predicts on
    # the CPU, and a GPU's convolutions differ from the CPU's (float32 there too: conftest turns TF32 off)
    assert abs(out['path'][0] - float(pred)) < (1e-4 if dls.device.type == 'cpu' else 1e-3)
    assert 'id0003.pgn' in out['missing'] and 'shelf' not in out['missing'].split('(')[0]

def _planet(folder, n=20):
    "Gray PNGs under folder/train with a planet-style tag column (space-separated, some empty) and a validation column."
    (folder/'train').mkdir()
    rng = np.random.default_rng(5)
    tags = ['clear primary', 'haze', 'primary water', '', 'clear', 'cloudy haze primary', 'water', 'clear haze']
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(folder/'train'/f'train_{i}.png')
        rows.append(dict(image_name=f'train_{i}', tags=tags[i % len(tags)], is_valid=i % 5 == 4))
    return pd.DataFrame(rows)

def test_label_delim_as_fastai_from_df(tmp_path):
    "The same `from_df` call, renamed and given a destination: fastai's vocab, split (valid_col), targets and images."
    df = _planet(tmp_path)
    kw = dict(folder='train', suff='.png', fn_col='image_name', label_col='tags', label_delim=' ', valid_col='is_valid', img_cls=PILImageBW)
    ref = ImageDataLoaders.from_df(df, tmp_path, **kw, bs=4, num_workers=0)
    build_shelf(df, tmp_path/'planet.shelf', tmp_path, **kw, n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(tmp_path/'planet.shelf', bs=4, normalize=False)
    assert list(dls.vocab) == list(ref.vocab) == ['clear', 'cloudy', 'haze', 'primary', 'water']
    for ours, theirs in ((dls.train, ref.train), (dls.valid, ref.valid)):
        keys = list(theirs.items.image_name)
        assert list(ours.items) == keys  # the table's row order ('train_10' after 'train_9'), as from_df's
        a, b = _by_key(ours, ours.items), _by_key(theirs, keys)
        for k in keys:
            assert torch.equal(a[k][1], b[k][1]) and type(a[k][1]) == type(b[k][1]), k  # one-hot TensorMultiCategory
            assert np.array_equal(a[k][0][0].numpy(), np.asarray(b[k][0])), k  # ours a tensor already, fastai's a PIL image
    # a test DataFrame's rows name files as fastai's ColReader does
    test = dls.test_dl(df.iloc[:3])
    assert torch.equal(test.one_batch()[0], ref.test_dl(df.iloc[:3]).one_batch()[0])
    (x, y), (u, v) = (d.test_dl(df.iloc[8:14], with_labels=True).one_batch() for d in (dls, ref))  # tags read from the rows
    assert torch.equal(x, u) and torch.equal(y, v) and type(y) == type(v)

def test_retired_spellings_fail_naming_the_new_one(bars, capsys):
    "0.2.0 removed 0.1.0's spellings: each fails loudly, before anything is written, naming what replaced it."
    path, df = bars
    kw = dict(size=32, n_workers=0, progress=False)
    with pytest.raises(TypeError, match="required positional argument: 'dest'"): build_shelf(df, path=path/'old.shelf', **kw)
    for old, new in [('img_path', 'path='), ('suffix', 'suff='), ('label_cols', 'label_col='), ('label_func', 'a column')]:
        with pytest.raises(TypeError, match=f"'{old}': since 0.2.0, {new}"): build_shelf(df, path/'old.shelf', path, **{old: 'x'}, **kw)
    assert not (path/'old.shelf').exists()
    with pytest.raises(TypeError, match="'label_names': since 0.2.0, vocab="): ShelfDataLoaders.from_shelf(path, label_names=['x'])
    with pytest.raises(TypeError, match='label_names'): shelf_dblock(path, label_names=['x'])
    df.to_csv(path/'t.csv', index=False)
    for flag, new in [('--img-path', '--path'), ('--suffix', '--suff'), ('--label-cols', '--label-col')]:
        with pytest.raises(SystemExit) as e: main(['build', str(path/'t.csv'), str(path/'cli.shelf'), flag, 'x', '--quiet'])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and f'{flag} was removed in 0.2.0: use {new}' in err, err
    assert not (path/'cli.shelf').exists()

def test_cli_build_with_fastai_names(tmp_path):
    df = _planet(tmp_path)
    df['age'] = np.linspace(0, 1, len(df))
    df.to_csv(tmp_path/'t.csv', index=False)
    r = subprocess.run([str(Path(sys.executable).with_name('fastai-shelve')), 'build', str(tmp_path/'t.csv'), str(tmp_path/'p.shelf'),
                        '--path', str(tmp_path), '--folder', 'train', '--suff', '.png', '--fn-col', 'image_name',
                        '--label-col', 'tags', '--label-delim', ' ', '--valid-col', 'is_valid', '--quiet'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open_shelf(tmp_path/'p.shelf') as s:
        assert s.meta['label_names'] == ['clear', 'cloudy', 'haze', 'primary', 'water'] and s.meta['valid_col'] == 'is_valid'
        assert np.array_equal(s['train_5']['labels'], [0, 1, 1, 1, 0])  # 'cloudy haze primary'
    r = subprocess.run([str(Path(sys.executable).with_name('fastai-shelve')), 'build', str(tmp_path/'t.csv'), str(tmp_path/'r.shelf'),
                        '--path', str(tmp_path/'train'), '--suff', '.png', '--fn-col', 'image_name', '--label-col', 'age',
                        '--y-block', 'regression', '--quiet'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open_shelf(tmp_path/'r.shelf') as s:
        assert s.meta['label_kind'] == 'regression' and np.allclose(s['train_3']['labels'], df.age[3])

def test_targets_refused_by_name(ages):
    path, df = ages
    bad = df.copy(); bad.loc[3, 'age'] = np.nan
    with pytest.raises(ShelfError, match=r"'age'.*id0003"):
        build_shelf(bad, path/'x.shelf', path, suff='.png', label_col='age', y_block=RegressionBlock, progress=False)
    with pytest.warns(UserWarning, match='RegressionBlock'):  # fastai's CategoryBlock on floats: as fastai, but said
        build_shelf(df, path/'cat.shelf', path, suff='.png', label_col='age', size=16, n_workers=0, progress=False)
    build_shelf(df, path/'multi.shelf', path, suff='.png', label_col=['a', 'b', 'c'], size=16, n_workers=0, progress=False)
    with pytest.raises(ShelfError, match="y='image'"): ShelfDataLoaders.from_shelf(path/'multi.shelf', y='image')
    with pytest.raises(ShelfError, match='category'): ShelfDataLoaders.from_shelf(path/'multi.shelf', y_block=CategoryBlock)
    # numeric categories read as numbers with RegressionBlock
    df['grade'] = np.arange(24) % 5
    build_shelf(df, path/'grade.shelf', path, suff='.png', label_col='grade', size=16, n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(path/'grade.shelf', y_block=RegressionBlock, bs=4, seed=0)
    x, y = dls.valid.one_batch()
    assert y.dtype == torch.float32 and y.tolist() == [float(int(k[2:]) % 5) for k in dls.valid.items[:4]]

def test_predict_and_test_dl_on_plain_dataloaders(bars_shelf):
    "`shelf_dblock(...).dataloaders(keys)` (fastai's own DataLoaders): predict and test_dl on paths, strs, keys, PIL, arrays."
    path, df = bars_shelf
    folder = path.parent
    dls = shelf_dblock(path, seed=0).dataloaders(open_shelf(path).keys(), bs=8, num_workers=0)
    assert type(dls).__name__ == 'DataLoaders'
    learn = vision_learner(dls, resnet18, n_in=1, pretrained=False)
    f = folder/'id0005.jpg'
    probs = {name: learn.predict(item)[2] for name, item in
             (('path', f), ('str', str(f)), ('key', 'id0005'), ('pil', Image.open(f)), ('array', np.asarray(Image.open(f))))}
    for name in ('str', 'pil', 'array'): assert torch.equal(probs[name], probs['path']), name
    assert torch.allclose(probs['key'], probs['path'], atol=0.05)  # the stored record: the same file, decoded once by the build
    with pytest.raises(FileNotFoundError, match='id0005.jgp'): learn.predict(str(folder/'id0005.jgp'))
    a = np.asarray(Image.open(f))
    xu, = dls.test_dl([a]).one_batch()
    xf, = dls.test_dl([a / 255.]).one_batch()  # floats in [0, 1] are x255 (fastai's rule), not stretched
    assert torch.equal(xu, xf)
    xt, = dls.test_dl([torch.from_numpy(a)[None].float() / 255]).one_batch()
    assert torch.equal(xu, xt)
    x_df, = dls.test_dl(df.iloc[:3]).one_batch()  # a DataFrame's rows: the files its fn_col names
    assert torch.equal(x_df, dls.test_dl([folder/f'{k}.jpg' for k in df.StudyInstanceUID[:3]]).one_batch()[0])
    learn.export(folder/'m.pkl')
    path.rename(folder/'elsewhere.shelf')  # inference without the shelf
    learn2 = load_learner(folder/'m.pkl')
    # `load_learner` predicts on the CPU: bit-equal where `learn` ran on the CPU too, within TF32's error where it ran on a GPU
    same = torch.equal if dls.device.type == 'cpu' else (lambda a, b: torch.allclose(a, b, atol=1e-3))
    for item in (f, str(f)): assert same(learn2.predict(item)[2], probs['path'])
    with pytest.raises(FileNotFoundError, match='id0005.jgp'): learn2.predict(str(folder/'id0005.jgp'))

def test_test_dl_dataframe_on_shelf_dataloaders(bars_shelf):
    path, df = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0)
    x_df, = dls.test_dl(df.iloc[:5]).one_batch()
    x_files, = dls.test_dl([path.parent/f'{k}.jpg' for k in df.StudyInstanceUID[:5]]).one_batch()
    assert x_df.shape == (5, 1, 64, 64) and torch.equal(x_df, x_files)

def tiny_pretrained(pretrained=False, **kwargs):
    "resnet18 under another name whose `model_meta` has ImageNet statistics and no weights to download."
    from torchvision.models import resnet18 as tv
    return tv(weights=None)
model_meta[tiny_pretrained] = {k:v for k,v in model_meta[resnet18].items() if k != 'weights'}

def test_normalisation_as_fastai(tmp_path):
    "RGB: no Normalize of ours, so a pretrained vision_learner adds ImageNet's as on files; gray: the shelf's own statistics."
    rng = np.random.default_rng(1)
    for i in range(10): Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path/f'{i}.png')
    df = pd.DataFrame({'id': [str(i) for i in range(10)], 'y': ['a', 'b'] * 5})
    build_shelf(df, tmp_path/'rgb.shelf', tmp_path, suff='.png', label_col='y', img_cls=PILImage, n_workers=0, progress=False)
    build_shelf(df, tmp_path/'gray.shelf', tmp_path, suff='.png', label_col='y', n_workers=0, progress=False)
    def norms(dls): return [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    rgb = ShelfDataLoaders.from_shelf(tmp_path/'rgb.shelf', bs=4, seed=0)
    files = ImageDataLoaders.from_df(df, tmp_path, suff='.png', label_col='y', bs=4, seed=0, num_workers=0)
    assert norms(rgb) == [] and norms(files) == []
    for d in (rgb, files): vision_learner(d, tiny_pretrained, pretrained=True)
    (ours,), (theirs,) = norms(rgb), norms(files)
    assert torch.allclose(ours.mean.cpu(), theirs.mean.cpu()) and torch.allclose(ours.mean.cpu().flatten(), torch.tensor(imagenet_stats[0]))
    gray = ShelfDataLoaders.from_shelf(tmp_path/'gray.shelf', bs=4, seed=0)
    vision_learner(gray, tiny_pretrained, n_in=1, pretrained=True)
    (n,) = norms(gray)  # fastai adds none for one channel: the shelf's own statistics, once
    with open_shelf(tmp_path/'gray.shelf') as s: assert np.allclose(n.mean.flatten().cpu().numpy(), s.meta['stats']['mean'])

def test_with_block_rebuild_and_lock(bars_shelf):
    "DataLoaders outlive the user's `with` block; a rebuild and a resume in the same process work while they hold the shelf."
    path, df = bars_shelf
    folder = path.parent
    with open_shelf(path) as s: dls = ShelfDataLoaders.from_shelf(s, bs=4, seed=0)
    x, y = dls.train.one_batch()  # after the block closed the user's handle
    assert x.shape == (4, 1, 64, 64)
    r = build_shelf(df, path, folder, suff='.jpg', label_col=['a', 'b', 'c'], size=64, n_workers=0, progress=False)
    assert (r.written, r.existing) == (0, 48)  # a resume with nothing to do, while `dls` holds the shelf
    more = write_bars(folder, 52, seed=0).iloc[48:]
    r = build_shelf(pd.concat([df, more]), path, folder, suff='.jpg', label_col=['a', 'b', 'c'], size=64, n_workers=0, progress=False)
    assert r.written == 4
    assert len(dls.train.shelf) == 52 and dls.valid.one_batch()[0].shape[1:] == (1, 64, 64)
    nolock = ShelfDataLoaders.from_shelf(path, bs=4, seed=0, lock=False)
    assert nolock.train.shelf.lock is False and nolock.train.one_batch()[0].shape == (4, 1, 64, 64)
    assert shelf_info(path, lock=False)['records'] == 52

@pytest.fixture
def pets(tmp_path):
    "12 RGB PNGs in path/train with a category column, and the CSV beside them."
    (tmp_path/'train').mkdir()
    rng = np.random.default_rng(1)
    for i in range(12): Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path/'train'/f'im{i}.png')
    df = pd.DataFrame({'fn': [f'im{i}' for i in range(12)], 'lbl': ['cat', 'dog', 'bird'] * 4})
    df.to_csv(tmp_path/'train.csv', index=False)
    return tmp_path, df

def test_resume_refuses_other_labels(pets):
    "A resume whose table gives other labels (a new class, or swapped values) is refused: stored indices would mean other classes."
    path, df = pets
    kw = dict(folder='train', fn_col='fn', suff='.png', label_col='lbl', img_cls=PILImage, n_workers=0, progress=False)
    build_shelf(df.iloc[:6], path/'g.shelf', path, **kw)
    more = df.copy(); more.loc[6:, 'lbl'] = 'ant'
    with pytest.raises(ShelfError, match='other labels.*vocab'): build_shelf(more, path/'g.shelf', path, **kw)
    swapped = df.copy(); swapped['lbl'] = swapped.lbl.map({'cat': 'dog', 'dog': 'cat', 'bird': 'bird'})
    with pytest.raises(ShelfError, match=r"records already in the shelf other labels than they hold \(4 in all.*ShelfDataLoaders.from_df"): build_shelf(swapped, path/'g.shelf', path, **kw)
    r = build_shelf(df, path/'g.shelf', path, **kw)  # the same labels: resumes
    assert (r.written, r.existing) == (6, 6)
    dls = ShelfDataLoaders.from_shelf(path/'g.shelf', bs=4, valid_pct=0.25, seed=0)
    assert [dls.vocab[int(dls.train_ds[i][1])] for i in range(len(dls.train_ds))] == \
           [df.set_index('fn').lbl[k] for k in dls.train_ds.items]

def test_vocab_and_csv_as_fastai(pets):
    "A given vocab is sorted as `CategoryBlock(vocab=)` sorts it; a CSV name is read under `path`, as `from_csv` reads it."
    path, df = pets
    build_shelf('train.csv', path/'v.shelf', path, folder='train', fn_col='fn', suff='.png', label_col='lbl',
                vocab=['dog', 'cat', 'bird'], img_cls=PILImage, n_workers=0, progress=False)
    ref = ImageDataLoaders.from_df(df, path, folder='train', fn_col='fn', suff='.png', label_col='lbl',
                                   y_block=CategoryBlock(vocab=['dog', 'cat', 'bird']), num_workers=0)
    dls = ShelfDataLoaders.from_shelf(path/'v.shelf', bs=4)
    assert list(dls.vocab) == list(ref.vocab) == ['bird', 'cat', 'dog']

def test_plain_tensor_is_hwc_as_in_fastai(pets):
    "fastai reads a plain tensor as numpy holds an image, (H,W,C); a `TensorImage` is (C,H,W)."
    from fastai.torch_core import TensorImage
    path, df = pets
    build_shelf(df, path/'t.shelf', path, folder='train', fn_col='fn', suff='.png', label_col='lbl', img_cls=PILImage,
                n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(path/'t.shelf', bs=4)
    a = np.asarray(Image.open(path/'train'/'im0.png'))
    x_arr, = dls.test_dl([a]).one_batch()
    x_hwc, = dls.test_dl([torch.from_numpy(a)]).one_batch()
    x_chw, = dls.test_dl([TensorImage(torch.from_numpy(a).permute(2, 0, 1))]).one_batch()
    assert x_arr.shape == (1, 3, 20, 24) and torch.equal(x_arr, x_hwc) and torch.equal(x_arr, x_chw)

def test_a_rerun_without_a_class_says_how_to_train_on_its_rows(pets):
    "A table that drops every row of a class gives a fresh build a smaller vocab: the rerun is refused saying so, and from_df on the shelf trains those rows as fastai's from_df does."
    path, df = pets
    kw = dict(folder='train', fn_col='fn', suff='.png', label_col='lbl', img_cls=PILImage, n_workers=0, progress=False)
    build_shelf(df, path/'g.shelf', path, **kw)
    no_bird = df[df.lbl != 'bird']
    with pytest.raises(ShelfError, match=r"other labels \{'vocab': \(\['bird', 'cat', 'dog'\], \['cat', 'dog'\]\)\}.*ShelfDataLoaders\.from_df"
                                         r".*keep the shelf's with vocab=\['bird', 'cat', 'dog'\], or build to a new path"):
        build_shelf(no_bird, path/'g.shelf', path, **kw)
    dls = ShelfDataLoaders.from_df(no_bird, path/'g.shelf', path, folder='train', fn_col='fn', label_col='lbl', valid_pct=0.25, seed=3, bs=4)
    ref = ImageDataLoaders.from_df(no_bird, path, folder='train', fn_col='fn', suff='.png', label_col='lbl', valid_pct=0.25, seed=3,
                                   bs=4, num_workers=0)
    assert list(dls.vocab) == list(ref.vocab) == ['cat', 'dog']
    assert [int(dls.train_ds[i][1]) for i in range(len(dls.train_ds))] == [int(ref.train_ds[i][1]) for i in range(len(ref.train_ds))]
