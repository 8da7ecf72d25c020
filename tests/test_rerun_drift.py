"""A rerun of the build cell gives what a fresh build of the same table gives: a file changed since its record was written
is decoded again (its size or modification time differ from those kept with the record), and the statistics `Normalize`
reads are those of the rows the table serves, whatever earlier builds wrote, pruned or decoded again."""
import os
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai.vision.all import ImageDataLoaders, PILImageBW, Resize, Normalize
from fastai_shelve.build import build_shelf
from fastai_shelve.store import open_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.splits import shelf_items

KW = dict(fn_col='fn', label_col='y', size=32, n_workers=0, progress=False)

@pytest.fixture
def dark_bright(tmp_path):
    "12 dark and 12 bright gray PNGs (32x32, as the build stores them) and their table."
    rng = np.random.default_rng(0)
    for i in range(24): Image.fromarray(rng.integers(0, 80 if i < 12 else 255, (32, 32), dtype=np.uint8)).save(tmp_path/f'i{i:02d}.png')
    return tmp_path, pd.DataFrame({'fn': [f'i{i:02d}.png' for i in range(24)], 'y': list('ab') * 12})

def _same(a, b):
    "The two shelves serve the same: items, images, labels, table, order, statistics (a rerun may keep records it doesn't serve)."
    with open_shelf(a) as s, open_shelf(b) as f:
        items = shelf_items(s)
        assert items == shelf_items(f) and s.table.equals(f.table) and s.order.equals(f.order)
        for x, y in zip(s.get_many(items), f.get_many(items)):
            np.testing.assert_array_equal(x['image'], y['image']); np.testing.assert_array_equal(x['labels'], y['labels'])
        assert s.meta.stats == f.meta.stats

def _rewrite(p, value:int):
    "Write `p` again with other pixels, its modification time moved on (some file systems keep whole seconds)."
    t = os.stat(p).st_mtime_ns
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(p)
    os.utime(p, ns=(t + 2_000_000_000, t + 2_000_000_000))

def test_a_changed_file_is_decoded_again(dark_bright):
    "The same table rerun after a file changed: that record is written again (the report says why), the rest kept."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    _rewrite(path/'i03.png', 200)
    r = build_shelf(df, path/'s.shelf', path, **KW)
    assert (r.written, r.existing, r.changed) == (1, 23, 1)
    assert 'i03' not in str(r) and '1 of them decoded again: their files changed since their records were written' in str(r)
    with open_shelf(path/'s.shelf') as s: assert (s['i03.png']['image'] == 200).all()
    build_shelf(df, path/'fresh.shelf', path, **KW)
    _same(path/'s.shelf', path/'fresh.shelf')
    r = build_shelf(df, path/'s.shelf', path, **KW)  # nothing changed since: nothing decoded
    assert (r.written, r.existing, r.changed) == (0, 24, 0)

def test_what_reaches_the_model_after_a_file_changed_is_what_files_give(dark_bright):
    "Batches of `from_shelf` after the rerun equal fastai's `from_df` on the files as they are now."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    _rewrite(path/'i05.png', 7)
    build_shelf(df, path/'s.shelf', path, **KW)
    dls = ShelfDataLoaders.from_shelf(path/'s.shelf', bs=24, seed=1, valid_pct=0, normalize=False, shuffle=False)
    ref = ImageDataLoaders.from_df(df, path, fn_col='fn', label_col='y', img_cls=PILImageBW, bs=24, seed=1, valid_pct=0,
                                   shuffle=False, num_workers=0)
    np.testing.assert_array_equal(dls.train.one_batch()[0].cpu().numpy(), ref.train.one_batch()[0].cpu().numpy())

def test_a_file_gone_keeps_its_record(dark_bright):
    "A shelf is a cache: a rerun where a file no longer is keeps its record (the images may be gone), as before."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    (path/'i07.png').unlink()
    r = build_shelf(df, path/'s.shelf', path, **KW)
    assert (r.written, r.existing, r.changed, r.bad) == (0, 24, 0, [])

def test_statistics_follow_the_table(dark_bright):
    "After reruns with fewer rows, with prune, and with the rows back, the statistics are a fresh build's of the same table."
    path, df = dark_bright
    dark, s, f = df.iloc[:12], path/'s.shelf', path/'f.shelf'
    build_shelf(df, s, path, **KW); build_shelf(dark, s, path, **KW)
    build_shelf(dark, f, path, **KW)
    _same(s, f)
    with open_shelf(s) as sh: assert sh.meta.stats['mean'][0] < 0.2  # the dark rows' own, not all 24 rows' (0.4)
    build_shelf(dark, s, path, prune=True, **KW); _same(s, f)
    build_shelf(df, s, path, **KW)  # the bright rows back: decoded again, counted once
    build_shelf(df, path/'all.shelf', path, **KW); _same(s, path/'all.shelf')
    _rewrite(path/'i02.png', 255)  # a file decoded again counts as it is now, not twice
    build_shelf(df, s, path, **KW); build_shelf(df, path/'all2.shelf', path, **KW); _same(s, path/'all2.shelf')

def test_from_df_normalizes_with_its_rows_statistics(dark_bright):
    "`ShelfDataLoaders.from_df` of some rows of a shelf normalizes as a shelf built of those rows only does."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    build_shelf(df.iloc[:12], path/'dark.shelf', path, **KW)
    norm = lambda dls: next(f for f in dls.after_batch.fs if isinstance(f, Normalize))
    a = ShelfDataLoaders.from_df(df.iloc[:12], path/'s.shelf', path, fn_col='fn', label_col='y', bs=4)
    b = ShelfDataLoaders.from_df(df.iloc[:12], path/'dark.shelf', path, fn_col='fn', label_col='y', bs=4)
    assert float(norm(a).mean) == float(norm(b).mean) and float(norm(a).std) == float(norm(b).std)
    c = ShelfDataLoaders.from_shelf(path/'dark.shelf', bs=4)
    assert float(norm(c).mean) == float(norm(b).mean)

def test_the_same_bytes_at_a_new_time_are_not_decoded_again(dark_bright):
    "Files copied or unpacked again (new times, same bytes) keep their records: the rerun reads them, decodes none, and keeps their new times."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    for f in path.glob('i0*.png'):
        t = os.stat(f).st_mtime_ns + 5_000_000_000
        os.utime(f, ns=(t, t))
    r = build_shelf(df, path/'s.shelf', path, **KW)
    assert (r.written, r.existing, r.changed) == (0, 24, 0)
    with open_shelf(path/'s.shelf') as s: assert s.sources(['i03.png'])['i03.png']['file'][1] == os.stat(path/'i03.png').st_mtime_ns

def test_a_changed_file_that_no_longer_decodes_has_no_record(dark_bright):
    "A file cut short since its record was written: the rerun reports it bad and serves it no more, as a fresh build; fastai fails on it."
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    raw = (path/'i03.png').read_bytes(); (path/'i03.png').write_bytes(raw[:len(raw)//2])
    r = build_shelf(df, path/'s.shelf', path, **KW)
    assert (r.written, r.changed, [k for k, _, _ in r.bad]) == (0, 0, ['i03.png'])
    build_shelf(df, path/'fresh.shelf', path, **KW)
    _same(path/'s.shelf', path/'fresh.shelf')
    with open_shelf(path/'s.shelf') as s: assert 'i03.png' not in s

def test_a_stopped_build_holds_nothing_after_it(dark_bright):
    "A build stopped by an error whose traceback is kept (as a notebook keeps it): its workers end, the shelf is not held, a rerun runs."
    path, df = dark_bright
    (path/'i05.png').write_bytes(b'not a png')
    with pytest.raises(Exception) as kept:  # `kept` holds the traceback, and with it the build's frames
        build_shelf(df, path/'s.shelf', path, **{**KW, 'n_workers': 2, 'strict': True})
    with open_shelf(path/'s.shelf') as s: assert s.building() is False
    r = build_shelf(df.drop(index=5), path/'s.shelf', path, **{**KW, 'n_workers': 2})
    assert r.written + r.existing == 23 and kept.value is not None

def _with_masks(path, n:int, seed:int, without=()):
    "`n` random gray PNGs and their 0/1 masks in `path/'m'` (none for the indices in `without`); the table of their ids."
    rng = np.random.default_rng(seed)
    (path/'m').mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path/f'i{i}.png')
        if i not in without: Image.fromarray(rng.integers(0, 2, (32, 32)).astype(np.uint8)).save(path/'m'/f'i{i}.png')
    return pd.DataFrame({'fn': [f'i{i}' for i in range(n)]})

def test_an_image_changed_while_its_mask_is_gone_is_decoded_again(tmp_path):
    "Each file is compared on its own: a mask no longer there hides no change of its image."
    df = _with_masks(tmp_path, 4, 1)
    kw = dict(fn_col='fn', suff='.png', size=32, n_workers=0, progress=False, mask_path='m')
    build_shelf(df, tmp_path/'s.shelf', tmp_path, **kw)
    (tmp_path/'m'/'i2.png').unlink(); _rewrite(tmp_path/'i2.png', 99)
    r = build_shelf(df, tmp_path/'s.shelf', tmp_path, **kw)
    assert r.changed == 0 and [k for k, _, _ in r.bad] == ['i2']  # decoded again: its mask is missing now, as a fresh build says
    with open_shelf(tmp_path/'s.shelf') as s: assert 'i2' not in s

def test_a_copy_converted_again_takes_the_sources_rebuilt_records(dark_bright):
    "convert_shelf into its earlier copy after the source was rebuilt (a file changed): the copy takes the new records, not only the missing ones."
    from fastai_shelve.build import convert_shelf
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)
    _rewrite(path/'i01.png', 123); build_shelf(df, path/'s.shelf', path, **KW)
    assert convert_shelf(path/'s.shelf', path/'c.shelf', progress=False) == 1
    _same(path/'s.shelf', path/'c.shelf')

def test_a_copy_converted_again_keeps_its_codec(dark_bright):
    "convert_shelf again into a compressed copy: the records it recopies take the copy's codec, as a resumed build's; another is refused."
    from fastai_shelve.build import convert_shelf
    from fastai_shelve.codec import ShelfError
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    convert_shelf(path/'s.shelf', path/'c.shelf', progress=False, compression='zstd', level=5)
    _rewrite(path/'i01.png', 123); build_shelf(df, path/'s.shelf', path, **KW)
    assert convert_shelf(path/'s.shelf', path/'c.shelf', progress=False) == 1  # no compression given: the copy's
    with open_shelf(path/'c.shelf') as c:
        assert (c.meta.compression, c.meta.compression_level) == ('zstd', 5)
        with c.txn() as txn: codecs = {c.layout(k, txn.get(k.encode())).fields[0].codec for k in c.keys()}
        assert codecs == {'zstd'}  # every image, the recopied one too
    _same(path/'s.shelf', path/'c.shelf')
    with pytest.raises(ShelfError, match=r"c\.shelf was copied with compression='zstd', level=5, not compression='lz4'"):
        convert_shelf(path/'s.shelf', path/'c.shelf', progress=False, compression='lz4')

def test_a_copy_converted_again_drops_what_the_source_dropped(dark_bright):
    "convert_shelf into its earlier copy after the source's rebuild dropped a record (a file that no longer decodes) and pruned another: the copy holds neither."
    from fastai_shelve.build import convert_shelf
    path, df = dark_bright
    build_shelf(df, path/'s.shelf', path, **KW)
    convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)
    (path/'i03.png').write_bytes(b'not a png')
    build_shelf(df.drop(index=7), path/'s.shelf', path, **KW, prune=True)
    convert_shelf(path/'s.shelf', path/'c.shelf', progress=False)
    _same(path/'s.shelf', path/'c.shelf')
    with open_shelf(path/'s.shelf') as s, open_shelf(path/'c.shelf') as c:
        assert 'i03.png' not in c and 'i07.png' not in c and sorted(c.keys()) == sorted(s.keys())

def test_masks_added_on_a_rerun_are_what_a_fresh_build_gives(tmp_path):
    "The build cell edited to add `mask_path` and run again: each record gets its mask, one whose mask file is missing is bad, as fresh."
    df = _with_masks(tmp_path, 5, 2, without=(3,))
    kw = dict(fn_col='fn', suff='.png', size=32, n_workers=0, progress=False)
    build_shelf(df, tmp_path/'s.shelf', tmp_path, **kw)
    r = build_shelf(df, tmp_path/'s.shelf', tmp_path, **kw, mask_path='m')
    f = build_shelf(df, tmp_path/'fresh.shelf', tmp_path, **kw, mask_path='m')
    assert [k for k, _, _ in r.bad] == [k for k, _, _ in f.bad] == ['i3']
    with open_shelf(tmp_path/'s.shelf') as s, open_shelf(tmp_path/'fresh.shelf') as g:
        items = shelf_items(s)
        assert items == shelf_items(g) == ['i0', 'i1', 'i2', 'i4']
        for x, y in zip(s.get_many(items), g.get_many(items)): np.testing.assert_array_equal(x['mask'], y['mask'])

def test_a_rerun_with_label_columns_leaves_no_tag_settings(tmp_path):
    "Tags in one column, then the same labels as 0/1 columns on a rerun: the metadata is a fresh build's (no `label_delim` left over)."
    from fastai_shelve.data import ShelfDataLoaders
    rng = np.random.default_rng(3)
    for i in range(6): Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path/f'i{i}.png')
    df = pd.DataFrame({'fn': [f'i{i}.png' for i in range(6)], 'tags': ['a', 'a b'] * 3, 'a': 1, 'b': [0, 1] * 3})
    kw = dict(fn_col='fn', size=32, n_workers=0, progress=False)
    build_shelf(df, tmp_path/'s.shelf', tmp_path, label_col='tags', label_delim=' ', **kw)
    build_shelf(df, tmp_path/'s.shelf', tmp_path, label_col=['a', 'b'], **kw)
    build_shelf(df, tmp_path/'fresh.shelf', tmp_path, label_col=['a', 'b'], **kw)
    with open_shelf(tmp_path/'s.shelf') as s, open_shelf(tmp_path/'fresh.shelf') as f:
        assert s.meta.label_delim is f.meta.label_delim is None
    assert list(ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', vocab=['B', 'A'], bs=2).vocab) == ['B', 'A']
