"""Items in the build table's row order, as `ImageDataLoaders.from_df` takes them: the same validation set and batches, in the
same order, for a valid column and for a seeded random split, with workers and without; `test_dl(df, with_labels=True)`."""
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import ImageDataLoaders, PILImageBW, RegressionBlock, vision_learner, resnet18
from fastai_shelve.codec import ShelfError
from fastai_shelve.store import open_shelf
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.splits import shelf_items

N = 20

@pytest.fixture
def table(tmp_path):
    "N gray PNGs of one size, and a table whose rows are NOT in key order (shuffled), with a category, a float and is_valid."
    rng = np.random.default_rng(3)
    for i in range(N): Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(tmp_path/f'im{i:02d}.png')
    ids = [f'im{i:02d}' for i in rng.permutation(N)]
    df = pd.DataFrame({'fn': ids, 'y': [('cat', 'dog', 'eel')[i % 3] for i in range(N)], 'age': np.linspace(0, 1, N),
                       'is_valid': np.arange(N) % 4 == 1})
    assert df.fn.tolist() != sorted(df.fn)
    return tmp_path, df

KW = dict(fn_col='fn', suff='.png', label_col='y')

def _build(path, df, dest='s.shelf', **kw):
    build_shelf(df, path/dest, path, img_cls=PILImageBW, n_workers=0, progress=False, **{**KW, **kw})
    return path/dest

def _batches(dl):
    "Every (x, y) of `dl`, as float and int tensors on the CPU."
    return [tuple(t.cpu() for t in b) for b in dl]

def _same_batches(ours, theirs):
    a, b = _batches(ours), _batches(theirs)
    assert len(a) == len(b) > 0
    for (x, y), (u, v) in zip(a, b): assert torch.equal(x, u) and torch.equal(y, v)

@pytest.mark.parametrize('nw', [0, 2])
@pytest.mark.parametrize('split', ['valid_col', 'valid_pct'])
def test_items_targets_images_in_from_df_order(table, split, nw):
    "The validation and training sets of from_shelf equal from_df's on the same files and table: items, targets, pixels, in order."
    path, df = table
    kw = dict(valid_col='is_valid') if split == 'valid_col' else dict(valid_pct=0.25, seed=7)
    shelf = _build(path, df, **(kw if split == 'valid_col' else {}))
    ours = ShelfDataLoaders.from_shelf(shelf, bs=4, normalize=False, num_workers=nw, **({} if split == 'valid_col' else kw))
    ref = ImageDataLoaders.from_df(df, path, img_cls=PILImageBW, bs=4, num_workers=nw, **KW, **kw)
    for o, r in ((ours.valid_ds, ref.valid_ds), (ours.train_ds, ref.train_ds)):
        assert list(o.items) == r.items.fn.tolist()  # the same rows, in the table's order
        assert [int(o[i][1]) for i in range(len(o))] == [int(r[i][1]) for i in range(len(r))]
    if split == 'valid_col': assert list(ours.valid_ds.items) == df.fn[df.is_valid].tolist()
    _same_batches(ours.valid, ref.valid)
    _same_batches(ours.train.new(shuffle=False, drop_last=False), ref.train.new(shuffle=False, drop_last=False))

@pytest.mark.parametrize('nw', [0, 2])
def test_get_preds_rows_line_up_with_the_table(table, nw):
    "get_preds(ds_idx=1)'s targets are the valid rows of the table in order, as a Learner on from_df gives them."
    path, df = table
    shelf = _build(path, df, valid_col='is_valid')
    ours = ShelfDataLoaders.from_shelf(shelf, bs=4, normalize=False, num_workers=nw)
    ref = ImageDataLoaders.from_df(df, path, img_cls=PILImageBW, valid_col='is_valid', bs=4, num_workers=nw, **KW)
    _, t_ours = vision_learner(ours, resnet18, n_in=1, pretrained=False).get_preds(ds_idx=1)
    _, t_ref = vision_learner(ref, resnet18, n_in=1, pretrained=False).get_preds(ds_idx=1)
    want = [ref.vocab.o2i[v] for v in df.y[df.is_valid]]
    assert t_ours.tolist() == t_ref.tolist() == want

def test_rerun_serves_the_latest_table(table):
    "Each build's table is the dataset, as from_df's: a table of new rows serves those; all rows reversed, in that order, none redecoded."
    path, df = table
    shelf = _build(path, df.iloc[:12])
    _build(path, df.iloc[12:])  # a table of the new rows only: only they are served (the first 12 stay, unserved)
    with open_shelf(shelf) as s: assert shelf_items(s) == df.fn.iloc[12:].tolist() and len(s) == N
    rev = df.iloc[::-1]
    r = build_shelf(rev, shelf, path, img_cls=PILImageBW, n_workers=0, progress=False, **KW)
    assert (r.written, r.existing, r.unnamed) == (0, N, 0)
    with open_shelf(shelf) as s: assert shelf_items(s) == rev.fn.tolist()
    ref = ImageDataLoaders.from_df(rev, path, img_cls=PILImageBW, valid_pct=0.25, seed=1, bs=4, num_workers=0, **KW)
    ours = ShelfDataLoaders.from_shelf(shelf, valid_pct=0.25, seed=1, bs=4)
    assert list(ours.valid_ds.items) == ref.valid_ds.items.fn.tolist()

def test_shelf_without_order_reads_in_key_order(table):
    "A shelf whose build kept no order (an older build): key order, as before."
    path, df = table
    shelf = _build(path, df)
    with open_shelf(shelf, 'c') as s:
        s._commit([(b'order', None)], db=s._metadb)  # as an older build left it
        assert s.order is None and shelf_items(s) == sorted(df.fn)

@pytest.mark.parametrize('nw', [0, 2])
def test_test_dl_with_labels_as_from_df(table, nw):
    "test_dl(df, with_labels=True): images and targets from the rows, as from_df's test_dl gives them (category and float)."
    path, df = table
    for kw in (dict(label_col='y'), dict(label_col='age', y_block=RegressionBlock)):
        shelf = _build(path, df.iloc[:14], dest=f"{kw['label_col']}.shelf", **kw)
        ours = ShelfDataLoaders.from_shelf(shelf, bs=4, normalize=False, num_workers=nw, seed=0)
        ref = ImageDataLoaders.from_df(df.iloc[:14], path, img_cls=PILImageBW, bs=4, num_workers=nw, seed=0, **{**KW, **kw})
        rows = df.iloc[10:]  # 4 rows in the shelf, 6 files it never saw
        _same_batches(ours.test_dl(rows, with_labels=True), ref.test_dl(rows, with_labels=True))
        x, = ours.test_dl(rows).one_batch()  # without labels, as before
        assert x.shape == (4, 1, 24, 20)
    with pytest.raises(ShelfError, match="no column 'age'"): ours.test_dl(rows.drop(columns='age'), with_labels=True).one_batch()

def test_one_group_is_a_clear_error(tmp_path):
    "A split that leaves nothing to train on (one file's frames, grouped by file) is a ShelfError naming the shelf and why."
    pytest.importorskip('pydicom')
    from test_dicom import cine
    cine(tmp_path, 'c', 4)
    for k in range(3): cine(tmp_path, f'f{k}', 2)
    build_shelf(pd.DataFrame({'id': ['c']}), tmp_path/'one.shelf', tmp_path, suff='.dcm', size=16, frame='all', n_workers=0, progress=False)
    with pytest.raises(ShelfError, match=r"one\.shelf: group_col='file'.*all 4 items are one group \('c'\)"):
        ShelfDataLoaders.from_shelf(tmp_path/'one.shelf', group_col='file', bs=2)
    df = pd.DataFrame({'id': ['f2', 'c', 'f0', 'f1'], 'v': [True] * 4})
    build_shelf(df, tmp_path/'all.shelf', tmp_path, suff='.dcm', size=16, frame='all', n_workers=0, progress=False)
    with pytest.raises(ShelfError, match=r"all\.shelf: valid_col='v' leaves no training items: all 10 are validation"):
        ShelfDataLoaders.from_shelf(tmp_path/'all.shelf', valid_col='v', bs=2)
    # frames: in the table's row order, each file's frames in frame order
    with open_shelf(tmp_path/'all.shelf') as s:
        assert shelf_items(s) == ['f2#0000', 'f2#0001', 'c#0000', 'c#0001', 'c#0002', 'c#0003', 'f0#0000', 'f0#0001', 'f1#0000', 'f1#0001']
    dls = ShelfDataLoaders.from_shelf(tmp_path/'all.shelf', group_col='file', valid_pct=0.9, seed=0, bs=2)
    assert len(dls.train_ds) > 0 and len(dls.valid_ds) > 0  # a share under 1 leaves a group to train on, as RandomSplitter does

def test_sharded_items_in_table_order(table):
    "A sharded shelf: items in the whole table's row order, as from_df's; a rerun's table replaces the first's."
    pytest.importorskip('dask')
    from fastai_shelve.shards import build_sharded
    path, df = table
    kw = dict(path=path, size=None, img_cls=PILImageBW, n_workers=1, **KW)
    build_sharded(df.iloc[15:], path/'sh', 3, **kw)
    build_sharded(df, path/'sh', 3, **kw)
    with open_shelf(path/'sh') as s: assert shelf_items(s) == df.fn.tolist()
    ours = ShelfDataLoaders.from_shelf(path/'sh', valid_pct=0.25, seed=2, bs=4, normalize=False)
    ref = ImageDataLoaders.from_df(df, path, img_cls=PILImageBW, valid_pct=0.25, seed=2, bs=4, num_workers=0, **KW)
    assert list(ours.valid_ds.items) == ref.valid_ds.items.fn.tolist()
    _same_batches(ours.valid, ref.valid)

def test_test_dl_with_labels_from_0_1_columns(bars_shelf):
    "0/1 label columns: test_dl(df, with_labels=True) gives each row's columns as the multi-label target."
    path, df = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=4, seed=0)
    rows = df.iloc[[5, 0, 9, 2]]
    x, y = dls.test_dl(rows, with_labels=True).one_batch()
    assert x.shape == (4, 1, 64, 64) and torch.equal(y.cpu(), torch.tensor(rows[['a', 'b', 'c']].to_numpy(), dtype=torch.float32))
