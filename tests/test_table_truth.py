"""The user's table is the truth, as in `ImageDataLoaders.from_df` (issue 27): a rerun build serves the latest table's rows
in its order; every split argument means what fastai means; `vocab=` is sorted as `CategoryBlock` sorts it;
`ShelfDataLoaders.from_df` reads a DataFrame's rows from a shelf; a training key the shelf lacks is a `ShelfError`.
Each test compares with fastai on the same real files (gray JPEGs and PNGs made here) and a real LMDB shelf."""
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.all import (ImageDataLoaders, PILImageBW, CategoryBlock, MultiCategoryBlock, RegressionBlock)
from fastai_shelve.codec import ShelfError
from fastai_shelve.interface import MissingKeyError
from fastai_shelve.store import open_shelf
from fastai_shelve.build import build_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.splits import shelf_items

N = 24

@pytest.fixture
def table(tmp_path):
    "N gray images, JPEG and PNG (the id is the file name), and a table in another order than the keys: category, tags, float, is_valid."
    rng = np.random.default_rng(5)
    ids = [f'im{i:02d}.{"jpg" if i % 2 else "png"}' for i in range(N)]
    for k in ids: Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(tmp_path/k, quality=90)
    ids = [ids[i] for i in rng.permutation(N)]
    df = pd.DataFrame({'fn': ids, 'y': [('cat', 'dog', 'eel')[i % 3] for i in range(N)],
                       'tags': [('a b', 'b', 'c a', '')[i % 4] for i in range(N)], 'age': np.linspace(0, 2, N),
                       'is_valid': np.arange(N) % 4 == 1})
    return tmp_path, df

KW = dict(fn_col='fn', label_col='y')

def _build(path, df, dest='s.shelf', **kw):
    return build_shelf(df, path/dest, path, img_cls=PILImageBW, n_workers=0, progress=False, **{**KW, **kw})

def _ref(path, df, **kw):
    "fastai's own DataLoaders on the files."
    return ImageDataLoaders.from_df(df, path, img_cls=PILImageBW, bs=4, num_workers=0, **{**KW, **kw})

def _items(ds): return [str(o) for o in (ds.items.fn if hasattr(ds.items, 'fn') else ds.items)]

def _same_batches(ours, theirs):
    a, b = [tuple(t.cpu() for t in x) for x in ours], [tuple(t.cpu() for t in x) for x in theirs]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert len(x) == len(y) and all(torch.equal(u.as_subclass(torch.Tensor), v.as_subclass(torch.Tensor)) for u, v in zip(x, y))

def _same_dls(ours, ref):
    "Same items in each split, same vocab, same batches (the training set unshuffled)."
    for o, r in ((ours.train_ds, ref.train_ds), (ours.valid_ds, ref.valid_ds)): assert _items(o) == _items(r)
    assert list(getattr(ours, 'vocab', [])) == list(getattr(ref, 'vocab', []))
    _same_batches(ours.valid, ref.valid)
    _same_batches(ours.train.new(shuffle=False, drop_last=False), ref.train.new(shuffle=False, drop_last=False))

def test_rerun_with_fewer_rows_serves_those_rows(table):
    "Rows dropped from the table are not served (validation rows don't leak into training); prune deletes their records."
    path, df = table
    _build(path, df, valid_col='is_valid')
    df2 = df.drop(index=[0, 1, 5, 9, 10, 13])  # 3 of them validation rows
    r = _build(path, df2, valid_col='is_valid')
    ours = ShelfDataLoaders.from_shelf(path/'s.shelf', bs=4, normalize=False)
    _same_dls(ours, _ref(path, df2, valid_col='is_valid'))
    assert not set(_items(ours.train_ds)) & set(df.fn[df.is_valid])
    assert (r.written, r.existing, r.unnamed) == (0, len(df2), 6) and 'prune=True' in repr(r)
    r = _build(path, df2, valid_col='is_valid', prune=True)
    assert (r.pruned, r.unnamed) == (6, 0)
    with open_shelf(path/'s.shelf') as s: assert sorted(s.keys()) == sorted(df2.fn) and s.verify() == []
    assert _build(path, df, valid_col='is_valid').written == 6  # the pruned rows, decoded again

def test_a_record_lost_since_its_build_is_an_error_not_a_row_left_out(table):
    "A row whose file was bad has no record and is left out; one whose record the build wrote and is gone (a damaged key) fails."
    path, df = table
    (path/df.fn[3]).write_bytes(b'no image')  # bad at the build: reported there, then not served, as before
    _build(path, df)
    with open_shelf(path/'s.shelf') as s: assert len(shelf_items(s)) == N - 1 and df.fn[3] not in shelf_items(s)
    k = df.fn[7]
    with open_shelf(path/'s.shelf', 'w') as s:
        with s.txn() as txn: rec = bytes(txn.get(k.encode()))
        s._commit([(k.encode(), None), (b'x' + k.encode()[1:], rec)])  # its key damaged: the record under another key
    with pytest.raises(MissingKeyError, match=f"s.shelf: 1 rows of its table lost the records its build wrote, e.g. key '{k}'"):
        ShelfDataLoaders.from_shelf(path/'s.shelf', bs=4)
    from fastai_shelve.splits import lost_records
    with open_shelf(path/'s.shelf') as s:  # rows found missing, whose records a running build committed since: not lost
        lost_records(s, [df.fn[0], df.fn[3]])
        with pytest.raises(MissingKeyError, match=k): lost_records(s, [df.fn[0], k])
    with open_shelf(path/'s.shelf', 'w') as s: s.delete('x' + k[1:])
    _build(path, df)  # the rerun writes it again
    assert len(shelf_items(open_shelf(path/'s.shelf'))) == N - 1

def test_rerun_with_shuffled_rows_takes_the_new_order(table):
    "The same rows in another order (a notebook's unseeded shuffle, run twice): valid_ds lines up with the new table."
    path, df = table
    _build(path, df, valid_col='is_valid')
    for seed in (1, 2):
        sh = df.sample(frac=1, random_state=seed)
        _build(path, sh, valid_col='is_valid')
    ours = ShelfDataLoaders.from_shelf(path/'s.shelf', bs=4, normalize=False)
    assert _items(ours.valid_ds) == sh.fn[sh.is_valid].tolist()
    _same_dls(ours, _ref(path, sh, valid_col='is_valid'))
    ours = ShelfDataLoaders.from_shelf(path/'s.shelf', valid_col=None, valid_pct=0.25, seed=3, bs=4, normalize=False)
    _same_dls(ours, _ref(path, sh, valid_pct=0.25, seed=3))  # the rows from_df's seeded split picks

def test_split_arguments_mean_what_fastai_means(table):
    "valid_col=None / valid_pct / seed on a valid_col shelf: from_df's RandomSplitter, or a ShelfError saying what to pass."
    path, df = table
    _build(path, df, valid_col='is_valid')
    p = path/'s.shelf'
    ours = ShelfDataLoaders.from_shelf(p, valid_col=None, valid_pct=0.5, seed=1, bs=4, normalize=False)
    _same_dls(ours, _ref(path, df, valid_pct=0.5, seed=1))
    ours = ShelfDataLoaders.from_shelf(p, valid_pct=0, seed=2, bs=4, normalize=False)  # "now train on everything"
    assert len(ours.valid_ds) == 0 and len(ours.train_ds) == N
    assert _items(ours.train_ds) == _items(_ref(path, df, valid_pct=0, seed=2).train_ds)
    assert len(ShelfDataLoaders.from_shelf(p, valid_pct=0, bs=4).train_ds) == N
    for kw in (dict(seed=42), dict(valid_pct=0.3)):
        with pytest.raises(ShelfError, match="built with valid_col='is_valid'.*pass valid_col=None"): ShelfDataLoaders.from_shelf(p, **kw)
    with pytest.raises(ShelfError, match="give one or the other"): ShelfDataLoaders.from_shelf(p, valid_col='is_valid', valid_pct=0.3)
    with pytest.raises(ShelfError, match="give one"): ShelfDataLoaders.from_shelf(p, valid_col='is_valid', group_col='age')
    _same_dls(ShelfDataLoaders.from_shelf(p, bs=4, normalize=False), _ref(path, df, valid_col='is_valid'))  # none given: the build's

def test_vocab_sorted_as_fastai_sorts_it(table):
    "from_shelf(vocab=) sorts categories as CategoryBlock(vocab=) does; tags keep fastai's given order, or are refused, never renamed."
    path, df = table
    _build(path, df)
    given = ['eel', 'cat', 'dog']
    ours = ShelfDataLoaders.from_shelf(path/'s.shelf', vocab=given, valid_pct=0.25, seed=0, bs=4, normalize=False)
    ref = _ref(path, df, y_block=CategoryBlock(vocab=given), valid_pct=0.25, seed=0)
    assert list(ref.vocab) == ['cat', 'dog', 'eel']
    _same_dls(ours, ref)
    _build(path, df, 't.shelf', label_col='tags', label_delim=' ')
    assert list(MultiCategoryBlock(vocab=['c', 'a', 'b']).type_tfms[0].vocab) == ['c', 'a', 'b']  # fastai keeps a tag vocab's order
    with pytest.raises(ShelfError, match="tag order"): ShelfDataLoaders.from_shelf(path/'t.shelf', vocab=['c', 'a', 'b'])
    assert list(ShelfDataLoaders.from_shelf(path/'t.shelf', vocab=['a', 'b', 'c']).vocab) == ['a', 'b', 'c']

@pytest.mark.parametrize('nw', [0, 2])
@pytest.mark.parametrize('case', ['category', 'tags', 'regression'])
def test_from_df_equals_fastais(table, case, nw):
    "from_df on a shelf: targets, split and batches equal ImageDataLoaders.from_df's on the files, for a filtered, shuffled table too."
    path, df = table
    _build(path, df, label_col=None)  # images only: the targets come from the table at load time
    kw = dict(category=dict(label_col='y', valid_col='is_valid'), tags=dict(label_col='tags', label_delim=' ', valid_pct=0.3, seed=4),
              regression=dict(label_col='age', y_block=RegressionBlock, valid_pct=0.25, seed=5))[case]
    for d in (df, df.iloc[3:].sample(frac=1, random_state=7)):  # a filtered, reshuffled table: no rebuild
        ours = ShelfDataLoaders.from_df(d, path/'s.shelf', path, fn_col='fn', bs=4, num_workers=nw, normalize=False, **kw)
        ref = ImageDataLoaders.from_df(d, path, fn_col='fn', img_cls=PILImageBW, bs=4, num_workers=nw, **kw)
        _same_dls(ours, ref)
        assert ours.c == ref.c and type(ours.loss_func).__name__ == type(ref.loss_func).__name__

def test_from_df_refuses_ids_without_records_at_once(table):
    path, df = table
    _build(path, df.iloc[:20], label_col=None)
    with pytest.raises(ShelfError, match=r"no record for 4 ids of column 'fn', e\.g\. \['im"):
        ShelfDataLoaders.from_df(df, path/'s.shelf', path, fn_col='fn', label_col='y')

def test_build_sharded_takes_build_shelfs_keywords(table):
    pytest.importorskip('dask')
    from fastai_shelve.shards import build_sharded
    path, df = table
    res = build_sharded(df, path/'sh', 2, path=path, img_cls=PILImageBW, n_workers=1, progress=False, **KW)
    assert sum(r['written'] for r in res) == N
    res = build_sharded(df.iloc[6:].sample(frac=1, random_state=3), path/'sh', 2, path=path, img_cls=PILImageBW, n_workers=1,
                        progress=False, prune=True, **KW)
    assert sum(r['pruned'] for r in res) == 6
    with open_shelf(path/'sh') as s: assert shelf_items(s) == df.iloc[6:].sample(frac=1, random_state=3).fn.tolist() and len(s) == N - 6

def test_a_training_key_the_shelf_lacks_is_a_shelf_error(table):
    "An item the shelf no longer finds (a damaged index, a record deleted under the DataLoaders): the shelf's error, not a file's."
    path, df = table
    _build(path, df, valid_col='is_valid')
    dls = ShelfDataLoaders.from_shelf(path/'s.shelf', bs=4)
    key = _items(dls.valid_ds)[1]
    with open_shelf(path/'s.shelf', 'c') as s: s.delete(key)
    with pytest.raises(MissingKeyError, match=rf"{key}.*s\.shelf"): list(dls.valid)
    x, = dls.test_dl([path/df.fn[0], str(path/df.fn[1]), _items(dls.valid_ds)[0]]).one_batch()  # files and keys, as before
    assert x.shape == (3, 1, 24, 20)
