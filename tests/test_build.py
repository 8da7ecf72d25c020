"The builder over real image files: bad inputs, resize modes, resume after a kill, parallel == serial."
import sys, textwrap
import numpy as np, pandas as pd, pytest
from PIL import Image
from fastai_shelve.build import build_shelf
from fastai_shelve.images import load_image
from fastai_shelve.store import open_shelf
from fastai_shelve.codec import ShelfError
from conftest import write_bars, kill_at_commit

def test_bad_inputs_reported_exactly(tmp_path):
    df = write_bars(tmp_path, 12)
    ids = df.StudyInstanceUID.tolist()
    p = lambda i: tmp_path/f'{ids[i]}.jpg'
    p(1).write_bytes(p(1).read_bytes()[:300])          # truncated JPEG
    p(2).write_bytes(b'')                               # 0-byte file
    p(3).write_text('this is not an image')             # text named .jpg
    p(4).unlink()                                       # missing file
    Image.fromarray(np.zeros((40, 30, 4), np.uint8), 'RGBA').save(p(5), format='PNG')  # PNG with alpha, named .jpg
    Image.fromarray(np.tile(np.arange(1000, 4200, 80, dtype=np.uint16), (50, 1))).save(p(6), format='PNG')  # 12-bit in 16
    Image.fromarray(np.zeros((30, 30), np.uint8)).convert('P').save(p(7), format='PNG') # palette
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(p(8))                              # 1x1
    Image.fromarray(np.zeros((3, 20000), np.uint8)).save(p(9), format='PNG')            # very wide
    r = build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], size=32,
                    n_workers=2, progress=False)
    bad = dict(zip(r.bad_df.key, r.bad_df.reason))
    assert sorted(bad) == sorted(ids[i] for i in (1, 2, 3, 4)), bad
    assert bad[ids[4]] == 'missing file'
    with open_shelf(tmp_path/'s.shelf') as s:
        assert sorted(s.keys()) == sorted(ids[i] for i in range(12) if i not in (1, 2, 3, 4))
        for i in (5, 6, 7, 8, 9): assert s[ids[i]]['image'].shape == (32, 32) and s[ids[i]]['image'].dtype == np.uint8
        deep = s[ids[6]]['image']
        assert deep.min() <= 2 and deep.max() >= 253 and len(np.unique(deep)) >= 30  # its own range (resized), not 12 levels

def test_strict_stops_but_keeps_what_was_written(tmp_path):
    df = write_bars(tmp_path, 6)
    (tmp_path/'id0003.jpg').write_bytes(b'junk')
    with pytest.raises(ShelfError, match='id0003'):
        build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.jpg', size=16, n_workers=0, strict=True, progress=False)
    with open_shelf(tmp_path/'s.shelf') as s: assert s.keys() == ['id0000', 'id0001', 'id0002']

@pytest.mark.parametrize('bad_df, match', [
    (lambda df: pd.concat([df, df.iloc[:2]]), 'more than once'),
    (lambda df: df.assign(a=df.a.astype(float).where(df.index != 2)), 'empty labels'),
    (lambda df: df.assign(a=df.a + 1), 'must be 0 or 1'),
    (lambda df: df.assign(StudyInstanceUID=df.StudyInstanceUID.where(df.index != 1)), 'empty ids'),
])
def test_bad_tables_fail_before_writing(tmp_path, bad_df, match):
    df = write_bars(tmp_path, 5)
    with pytest.raises(ShelfError, match=match):
        build_shelf(bad_df(df), tmp_path/'s.shelf', path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], progress=False)
    assert not (tmp_path/'s.shelf').exists()

def test_a_wrong_suffix_is_named_in_the_report(tmp_path):
    "No file found (a wrong suff): the report's line says which file is there instead, as the CLI does."
    df = write_bars(tmp_path, 3)
    r = build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.png', n_workers=0, progress=False)
    assert r.none_found and (r.written, len(r.bad)) == (0, 3)
    assert str(r).endswith("none of the files was found: e.g. id0000.png is missing but id0000.jpg is there: check suff (now '.png')")
    r = build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.jpg', n_workers=0, progress=False)
    assert not r.none_found and 'none of the files' not in str(r) and r.written == 3
    # a list of files has no suffix of ours to blame
    r = build_shelf([tmp_path/'id0000.png'], tmp_path/'l.shelf', n_workers=0, progress=False)
    assert str(r).endswith(f"none of the files was found: e.g. {tmp_path/'id0000.png'} is not there: the list names files that are missing")

def test_files_with_one_name_in_two_folders(tmp_path):
    "A list of files keys each by its stem: two files of one name are refused naming both, before anything is written."
    for d in ('a', 'b'): (tmp_path/d).mkdir(); Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/d/'img0.png')
    with pytest.raises(ShelfError, match=r"'img0' is the name of \['\S+/a/img0.png', '\S+/b/img0.png'\]: rename them"):
        build_shelf([tmp_path/'a'/'img0.png', tmp_path/'b'/'img0.png'], tmp_path/'s.shelf', n_workers=0, progress=False)
    assert not (tmp_path/'s.shelf').exists()
    with pytest.raises(ShelfError, match=r"ids must be unique, and these occur more than once: \['img0'\]"):  # one file, twice
        build_shelf([tmp_path/'a'/'img0.png', tmp_path/'b'/'..'/'a'/'img0.png'], tmp_path/'s.shelf', n_workers=0, progress=False)

def test_label_vector_widths_checked(tmp_path):
    "A label column holding vectors (what 0.1.0's label_func= made): rows of another width are refused by id."
    df = write_bars(tmp_path, 4)
    df['y'] = [[1, 0] if i != 2 else [1, 0, 1] for i in range(len(df))]
    with pytest.raises(ShelfError, match="'id0002'"): build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.jpg', label_col='y', progress=False)

def test_non_string_ids_and_category_labels(tmp_path):
    for i in range(4): Image.fromarray(np.full((20, 20), i*40, np.uint8)).save(tmp_path/f'{100+i}.png')
    df = pd.DataFrame({'id': [100, 101, 102, 103], 'finding': ['cvc', 'ett', 'cvc', 'ngt']})
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.png', label_col='finding', progress=False, n_workers=0)
    with open_shelf(tmp_path/'s.shelf') as s:
        assert s.keys() == ['100', '101', '102', '103'] and s.meta['vocab'] == ['cvc', 'ett', 'ngt']
        assert int(s['103']['labels']) == 2

def test_resize_modes(tmp_path):
    Image.fromarray(np.zeros((300, 500), np.uint8)).save(tmp_path/'wide.jpg')
    Image.fromarray(np.zeros((500, 300, 3), np.uint8)).save(tmp_path/'tall.png')
    files = [tmp_path/'wide.jpg', tmp_path/'tall.png']
    for kw, shapes in [(dict(size=64), [(64, 64), (64, 64)]), (dict(size=(40, 80)), [(40, 80), (40, 80)]),
                       (dict(shortest_side=150), [(150, 250), (250, 150)]), (dict(max_side=100), [(60, 100), (100, 60)]),
                       (dict(), [(300, 500), (500, 300)])]:
        for f, shape in zip(files, shapes): assert load_image(f, **kw).shape == shape, (kw, f)
    build_shelf(files, tmp_path/'s.shelf', shortest_side=150, gray=False, progress=False, n_workers=0)
    with open_shelf(tmp_path/'s.shelf') as s: assert s['tall']['image'].shape == (250, 150, 3)

def test_parallel_equals_serial(tmp_path):
    df = write_bars(tmp_path, 20)
    kw = dict(path=tmp_path, suff='.jpg', label_col=['a', 'b', 'c'], size=48, progress=False)
    build_shelf(df, tmp_path/'p.shelf', n_workers=2, **kw); build_shelf(df, tmp_path/'q.shelf', n_workers=0, **kw)
    with open_shelf(tmp_path/'p.shelf') as p, open_shelf(tmp_path/'q.shelf') as q:
        assert p.keys() == q.keys()
        for a,b in zip(p.get_many(p.keys()), q.get_many(q.keys())):
            np.testing.assert_array_equal(a['image'], b['image']); np.testing.assert_array_equal(a['labels'], b['labels'])
        assert p.meta['stats']['mean'] == pytest.approx(q.meta['stats']['mean'])
        imgs = np.stack([r['image'] for r in p.get_many(p.keys())]) / 255
        assert p.meta['stats']['mean'][0] == pytest.approx(imgs.mean()) and p.meta['stats']['std'][0] == pytest.approx(imgs.std())

def codecs(shelf) -> set:
    "The codecs the records of `shelf` hold their images in."
    from fastai_shelve.codec import record_layout
    with open_shelf(shelf) as s, s.txn() as txn: return {record_layout(buf).fields[0].codec for _,buf in txn.cursor()}

def test_resume_keeps_the_shelfs_compression(tmp_path):
    "A resume writes the codec the shelf was built with: compression=None keeps it; another one is refused, nothing written."
    df = write_bars(tmp_path, 6)
    kw = dict(path=tmp_path, suff='.jpg', size=32, n_workers=0, progress=False)
    build_shelf(df.iloc[:2], tmp_path/'z.shelf', compression='zstd', **kw)
    r = build_shelf(df.iloc[:4], tmp_path/'z.shelf', **kw)  # None: as the shelf was built
    assert (r.existing, r.written) == (2, 2) and codecs(tmp_path/'z.shelf') == {'zstd'}
    with open_shelf(tmp_path/'z.shelf') as s: assert s.meta['compression'] == 'zstd'
    with pytest.raises(ShelfError, match=r"z\.shelf was built with compression='zstd'.*not compression='lz4'.*fastai-shelve convert"):
        build_shelf(df, tmp_path/'z.shelf', compression='lz4', **kw)
    with pytest.raises(ShelfError, match=r"level=None.*not .*level=19"): build_shelf(df, tmp_path/'z.shelf', compression='zstd', level=19, **kw)
    build_shelf(df.iloc[:2], tmp_path/'raw.shelf', **kw)
    with pytest.raises(ShelfError, match=r"raw\.shelf was built with compression=None.*not compression='zstd'"):
        build_shelf(df, tmp_path/'raw.shelf', compression='zstd', **kw)
    with open_shelf(tmp_path/'z.shelf') as z, open_shelf(tmp_path/'raw.shelf') as raw:
        assert (len(z), len(raw), raw.meta['compression']) == (4, 2, None)
    assert codecs(tmp_path/'raw.shelf') == {None}
    build_shelf(df.iloc[:2], tmp_path/'l.shelf', compression='zstd', level=5, **kw)
    assert build_shelf(df.iloc[:3], tmp_path/'l.shelf', **kw).written == 1  # None, None: the shelf's zstd at level 5
    with pytest.raises(ShelfError, match=r"level=5, not compression='zstd', level=3"): build_shelf(df, tmp_path/'l.shelf', level=3, **kw)
    with open_shelf(tmp_path/'l.shelf') as s: assert (len(s), s.meta['compression'], s.meta['compression_level']) == (3, 'zstd', 5)

BUILD = textwrap.dedent('''
    import sys, pandas as pd
    from fastai_shelve.build import build_shelf
    df = pd.read_csv(sys.argv[1])
    build_shelf(df, sys.argv[2], path=sys.argv[3], suff='.png', label_col=['a', 'b', 'c'], size=96,
                n_workers=int(sys.argv[4]), commit_every=5, progress=False)
''')

@pytest.mark.parametrize('kill_after,during', [(1, False), (25, False), (25, True)])
def test_resume_after_kill(tmp_path, kill_after, during):
    "SIGKILL a build at a commit (after it, or with it open): the shelf holds the committed records; a rerun finishes the rest."
    df = write_bars(tmp_path, 120, ext='.png')
    df.to_csv(tmp_path/'train.csv', index=False)
    (tmp_path/'build.py').write_text(BUILD)
    shelf = tmp_path/'s.shelf'
    at = kill_at_commit([sys.executable, str(tmp_path/'build.py'), str(tmp_path/'train.csv'), str(shelf), str(tmp_path), '1'],
                        kill_after, during)
    with open_shelf(shelf) as s:
        done = s.keys()
        assert len(done) == at[1] and (len(done) < kill_after if during else len(done) >= kill_after), at  # the open one: none
        assert not s.verify()  # every record present decodes and matches its checksum
    r = build_shelf(df, shelf, path=tmp_path, suff='.png', label_col=['a', 'b', 'c'], size=96, n_workers=0, progress=False)
    assert r.existing == len(done) and r.written == 120 - len(done)
    with open_shelf(shelf) as s:
        assert s.keys() == sorted(df.StudyInstanceUID)
        for k in df.StudyInstanceUID[::7]:
            np.testing.assert_array_equal(s[k]['image'], load_image(tmp_path/f'{k}.png', size=96))

def test_resume_with_tuple_size(tmp_path):
    "A (h, w) size comes back from the metadata as a list; resuming with the same tuple must not look like new settings."
    df = write_bars(tmp_path, 4)
    kw = dict(path=tmp_path, suff='.jpg', size=(40, 80), n_workers=0, progress=False)
    build_shelf(df.iloc[:2], tmp_path/'s.shelf', **kw)
    r = build_shelf(df, tmp_path/'s.shelf', **kw)
    assert (r.existing, r.written) == (2, 2)

def test_the_table_keeps_pandas_column_types(tmp_path):
    "Columns from_df takes (dates, nullable ints and bools, categories, ordered or not, durations) are kept and come back in their dtypes."
    from pathlib import PurePath
    for i in range(3): Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path/f'f{i}.png')
    df = pd.DataFrame({'fn': ['f0', 'f1', 'f2'], 'y': list('aba'),
                       'seen': pd.to_datetime(['2020-01-01 00:00:00', '2021-02-03 04:05:06', None]), 'age': pd.array([60, None, 7], dtype='Int64'),
                       'ok': pd.array([True, None, False], dtype='boolean'), 'site': pd.Categorical(['x', 'y', 'x']),
                       'wait': pd.to_timedelta([1, 2, 3], unit='s'), 'w': [1.5, np.nan, 2.0],
                       'grade': pd.Categorical(['mild', 'severe', 'mild'], ['severe', 'mild', 'none'], ordered=True)})
    build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.png', label_col='y', size=8, n_workers=0, progress=False)
    with open_shelf(tmp_path/'s.shelf') as s: t = s.table
    want = df.drop(columns=['fn', 'y']).set_axis(pd.Index(['f0', 'f1', 'f2'], name='key'))
    pd.testing.assert_frame_equal(t, want)
    assert t.grade.cat.ordered and list(t.grade.cat.categories) == ['severe', 'mild', 'none']  # what sorting and codes use
    bad = df.assign(where=[PurePath('a'), PurePath('b'), PurePath('c')])
    with pytest.raises(ShelfError, match=r"the table's column 'where' holds values a shelf's table can't keep .*astype\(str\)"):
        build_shelf(bad, tmp_path/'t.shelf', tmp_path, fn_col='fn', suff='.png', label_col='y', size=8, n_workers=0, progress=False)
    assert not (tmp_path/'t.shelf').exists()  # refused before a file was made

def test_a_float_image_with_nan_is_a_bad_record(tmp_path):
    "A float TIFF holding a NaN or an infinity goes into the report as bad (min-max scaling made it all black, counted good)."
    good = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    bad = good.copy(); bad[3, 5] = np.nan
    inf = good.copy(); inf[0, 0] = np.inf
    for n, a in (('good', good), ('nan', bad), ('inf', inf)): Image.fromarray(a, mode='F').save(tmp_path/f'{n}.tif')
    df = pd.DataFrame({'fn': ['good', 'nan', 'inf']})
    r = build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.tif', size=32, n_workers=0, progress=False)
    assert r.written == 1 and sorted(k for k, _, _ in r.bad) == ['inf', 'nan']
    assert all('NaN or infinite pixel values' in why for _, _, why in r.bad), r.bad

def test_convert_refuses_into_itself_and_into_another_sources_copy(tmp_path):
    "convert_shelf into its own source, or into a copy of another shelf (its records would stay under the keys they share), is refused."
    from fastai_shelve.build import convert_shelf
    for n, v in (('a', 10), ('b', 200)):
        with open_shelf(tmp_path/f'{n}.shelf', 'c') as s: s.put_many({f'k{i}': {'image': np.full((4, 4), v, np.uint8)} for i in range(3)})
    with pytest.raises(ShelfError, match='give the copy a new path'): convert_shelf(tmp_path/'a.shelf', tmp_path/'a.shelf', progress=False)
    assert convert_shelf(tmp_path/'a.shelf', tmp_path/'mix.shelf', progress=False) == 3
    with pytest.raises(ShelfError, match=r"mix\.shelf is a copy of .*a\.shelf, not of .*b\.shelf"):
        convert_shelf(tmp_path/'b.shelf', tmp_path/'mix.shelf', progress=False)
    with pytest.raises(ShelfError, match=r"a\.shelf is a shelf of its own build, not of .*b\.shelf"):
        convert_shelf(tmp_path/'b.shelf', tmp_path/'a.shelf', progress=False)
    assert convert_shelf(tmp_path/'a.shelf', tmp_path/'mix.shelf', progress=False) == 0  # its own source again: a resume
    with open_shelf(tmp_path/'mix.shelf') as s: assert (s['k1']['image'] == 10).all()

def test_a_column_named_file_is_kept_in_the_table(tmp_path):
    "A table's own column 'file' (not the ids: `fn_col` names them) is kept, and can be the group column, as any other."
    from fastai_shelve.splits import shelf_splitter, shelf_items
    for i in range(6): Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path/f'f{i}.png')
    df = pd.DataFrame({'fn': [f'f{i}' for i in range(6)], 'y': list('ab') * 3, 'file': ['scan1', 'scan1', 'scan2', 'scan2', 'scan3', 'scan3']})
    build_shelf(df, tmp_path/'s.shelf', tmp_path, fn_col='fn', suff='.png', label_col='y', size=8, n_workers=0, progress=False)
    with open_shelf(tmp_path/'s.shelf') as s:
        assert s.table.file.tolist() == df.file.tolist()
        _, valid = shelf_splitter(s, valid_pct=0.3, seed=0, group_col='file')(shelf_items(s))
        assert len(valid) == 2 and df.file[list(valid)].nunique() == 1
    kw = dict(suff='.png', label_col='y', size=8, n_workers=0, progress=False, frame='all')
    with pytest.raises(ShelfError, match="rename the table's own"): build_shelf(df, tmp_path/'f.shelf', tmp_path, fn_col='fn', **kw)
    ids = df.drop(columns='file').rename(columns={'fn': 'file'})  # the ids' column named 'file': no clash, it is not a table column
    build_shelf(ids, tmp_path/'g.shelf', tmp_path, fn_col='file', **kw)
    with open_shelf(tmp_path/'g.shelf') as s: assert s.table.file.tolist() == ids.file.tolist()
