"Every `compression=` choice round-trips every kind of array, decodes straight into a batch, survives a killed build, converts."
import json, random, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest
from fastai_shelve.codec import COMPRESSIONS, RecordError, encode_record, decode_record, record_layout, compress, decompress
from fastai_shelve.store import open_shelf
from fastai_shelve.info import shelf_info
from fastai_shelve.build import build_shelf, convert_shelf
from conftest import write_bars, kill_at_commit

NEW = ('lz4hc', 'zstd-delta', 'lz4hc-delta')

def test_compressions_lists_every_choice():
    assert set(NEW) < set(COMPRESSIONS) and None not in COMPRESSIONS
    with pytest.raises(RecordError, match='zstd-delta'): encode_record({'x': np.zeros(300, np.uint8)}, compression='gzip')

def real_arrays() -> dict:
    "Arrays of every kind a shelf holds: real gray and RGB photographs, a CT's int16 and float32 values, masks, odd shapes."
    import cv2, pydicom
    from skimage import data
    from pydicom.data import get_testdata_file
    ct = pydicom.dcmread(get_testdata_file('CT_small.dcm')).pixel_array  # int16, 128x128
    gray = cv2.resize(data.camera(), (80, 64), interpolation=cv2.INTER_AREA)
    seg = (np.add.outer(np.arange(60), np.arange(70)) // 30).astype(np.uint8)  # label blocks 0..4
    rng = np.random.default_rng(0)
    return {'gray': gray, 'rgb': cv2.resize(data.astronaut(), (64, 48), interpolation=cv2.INTER_AREA),
            'mask': seg, 'bool mask': seg > 1, 'ct int16': ct, 'ct float32': ct.astype(np.float32) * 0.5 - 1024.25,
            'big-endian int16': ct.astype('>i2'), 'uint16': (ct.astype(np.int32) + 2000).astype(np.uint16),
            '1x1': np.array([[7]], np.uint8), '3x5x3': rng.integers(0, 256, (3, 5, 3), np.uint8),
            'empty': np.zeros((0, 4), np.uint8), 'empty 1d': np.zeros(0, np.float32), '1-d int32': np.arange(-500, 500, dtype=np.int32),
            'wide rgb row': rng.integers(0, 256, (1, 400, 3), np.uint8), 'complex64': (rng.standard_normal((16, 16)) + 1j).astype(np.complex64),
            'float64 with nan': np.where(rng.random((20, 20)) < 0.1, np.nan, rng.standard_normal((20, 20)))}

@pytest.mark.parametrize('codec', COMPRESSIONS)
def test_round_trip_every_kind_of_array(codec):
    for name, a in real_arrays().items():
        b = encode_record({'a': a, 'labels': np.array([0, 1], np.int8), 'id': name}, compression=codec)
        lay = record_layout(b)
        f = lay.fields[0]
        assert f.codec == (codec if a.nbytes >= 256 else None), name  # big arrays compressed, small ones raw
        r = decode_record(b, check=True)
        assert r['a'].dtype == a.dtype and r['a'].shape == a.shape and r['id'] == name, name
        np.testing.assert_array_equal(r['a'], a, err_msg=f'{codec} {name}')
        out = np.full((3,) + a.shape, 1, a.dtype)
        lay.read_into(b, f, out, 2)  # decoded straight into a row of a batch; the other rows untouched
        np.testing.assert_array_equal(out[2], a, err_msg=f'{codec} {name} read_into')
        np.testing.assert_array_equal(out[:2], np.full((2,) + a.shape, 1, a.dtype))

@pytest.mark.parametrize('codec', ['zstd-delta', 'lz4hc-delta'])
def test_delta_is_pngs_sub_filter_along_rows_per_channel(codec):
    "The stored bytes, entropy-decoded only, are each pixel minus its left neighbour (mod 256), channel by channel."
    import imagecodecs
    a = real_arrays()['rgb']
    b = encode_record({'a': a}, compression=codec)
    lay = record_layout(b); f = lay.fields[0]
    data = b[lay.start+f.offset:lay.start+f.offset+f.stored]
    raw = (imagecodecs.zstd_decode(data) if codec.startswith('zstd') else imagecodecs.lz4_decode(data, out=f.nbytes))
    d = np.frombuffer(raw, np.uint8).reshape(a.shape)
    want = a.copy(); want[:, 1:] = a[:, 1:] - a[:, :-1]  # uint8 wraps: PNG's SUB
    np.testing.assert_array_equal(d, want)
    gray = real_arrays()['gray']  # a smooth photograph: the filter makes it smaller than the plain codec
    plain = codec.replace('-delta', '')
    assert len(encode_record({'a': gray}, compression=codec)) < len(encode_record({'a': gray}, compression=plain))

@pytest.mark.parametrize('codec', NEW)
def test_damaged_data_is_a_record_error_never_more_memory(codec):
    a = real_arrays()['gray']
    c = compress(a, codec)
    out = np.empty_like(a)
    np.testing.assert_array_equal(decompress(c, codec, a.nbytes, out), a)
    with pytest.raises(RecordError): decompress(b'\x00' * 64 + bytes(c[64:]), codec, a.nbytes, np.empty_like(a))
    with pytest.raises(RecordError): decompress(c, codec, a.nbytes - 80, np.empty((a.shape[0] - 1, a.shape[1]), a.dtype))  # header lies: short
    with pytest.raises(RecordError): decompress(c[:len(c)//2], codec, a.nbytes, np.empty_like(a))  # truncated
    with pytest.raises(RecordError): decompress(c, codec, a.nbytes, np.empty((a.shape[1], a.shape[0]), a.dtype).T)  # not C-contiguous

@pytest.mark.parametrize('codec', NEW)
@pytest.mark.parametrize('kind', ['gray', 'rgb'])
def test_get_batch_into_preallocated_batch_equals_items(tmp_path, codec, kind):
    import cv2
    from skimage import data
    base = data.astronaut() if kind == 'rgb' else data.camera()
    rng = np.random.default_rng(1)
    with open_shelf(tmp_path/'s.shelf', 'n', compression=codec) as s:
        for i in range(24):  # real crops, resized as a build does
            y, x = rng.integers(0, 200, 2)
            s[f'k{i:02d}'] = {'image': cv2.resize(base[y:y+300, x:x+300], (96, 80)), 'labels': np.array([i % 2, 1], np.int8)}
    with open_shelf(tmp_path/'s.shelf') as s:
        keys = [f'k{i:02d}' for i in rng.permutation(24)[:17]]
        shape = (17, 80, 96) + ((3,) if kind == 'rgb' else ())
        out = {'image': np.zeros(shape, np.uint8), 'labels': np.zeros((17, 2), np.int8)}
        b = s.get_batch(keys, out=out)
        assert b['image'] is out['image']  # filled in place
        for i,k in enumerate(keys):
            r = s[k]
            np.testing.assert_array_equal(out['image'][i], r['image']); np.testing.assert_array_equal(out['labels'][i], r['labels'])
        with s.txn() as txn: assert record_layout(txn.get(keys[0].encode())).fields[0].codec == codec
        np.testing.assert_array_equal(s.get_batch(keys)['image'], out['image'])  # a batch it makes itself: the same

@pytest.mark.parametrize('codec', NEW)
def test_convert_into_each_and_info_shows_the_ratio(bars_shelf, tmp_path, codec):
    src, df = bars_shelf
    n = convert_shelf(src, tmp_path/'c.shelf', compression=codec, progress=False)
    assert n == len(df)
    info = shelf_info(tmp_path/'c.shelf')
    assert info['compression'].startswith(f'{codec} (') and 'x the raw arrays' in info['compression']
    assert info['meta']['compression'] == codec
    with open_shelf(src) as a, open_shelf(tmp_path/'c.shelf') as b:
        assert not b.verify()
        np.testing.assert_array_equal(a.get_batch(a.keys())['image'], b.get_batch(a.keys())['image'])

def test_cli_convert_and_info_with_a_delta_choice(bars_shelf, tmp_path):
    src, _ = bars_shelf
    exe = [str(Path(sys.executable).with_name('fastai-shelve'))]
    r = subprocess.run(exe + ['convert', str(src), str(tmp_path/'d.shelf'), '--compression', 'lz4hc-delta'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(exe + ['info', str(tmp_path/'d.shelf')], capture_output=True, text=True)
    assert r.returncode == 0 and 'lz4hc-delta (' in r.stdout, r.stdout + r.stderr[-2000:]
    r = subprocess.run(exe + ['convert', str(src), str(tmp_path/'e.shelf'), '--compression', 'png'], capture_output=True, text=True)
    assert r.returncode != 0 and 'Traceback' not in r.stderr and 'zstd-delta' in r.stdout + r.stderr  # the choices, one line

BUILD = textwrap.dedent('''
    import sys, pandas as pd
    from fastai_shelve.build import build_shelf
    build_shelf(pd.read_csv(sys.argv[1]), sys.argv[2], path=sys.argv[3], suff='.png', label_col=['a', 'b', 'c'],
                size=96, gray=sys.argv[5] == 'gray', n_workers=int(sys.argv[4]), commit_every=7, progress=False, compression='zstd-delta')
''')

@pytest.mark.parametrize('i', [0, pytest.param(1, marks=pytest.mark.slow)])
def test_kill_during_delta_build_then_resume(tmp_path, i):
    "SIGKILL a zstd-delta build part-way: whole records with a clean build's pixels; resuming completes it, compressed."
    df = write_bars(tmp_path, 150, ext='.png'); df.to_csv(tmp_path/'train.csv', index=False)
    (tmp_path/'build.py').write_text(BUILD)
    kw = dict(path=tmp_path, suff='.png', label_col=['a', 'b', 'c'], size=96, progress=False, n_workers=0)
    mode = ['gray', 'rgb'][i % 2]
    build_shelf(df, tmp_path/'clean.shelf', gray=mode == 'gray', **kw)
    rng = random.Random(200 + i)
    shelf = tmp_path/'z.shelf'
    cmd = [sys.executable, str(tmp_path/'build.py'), str(tmp_path/'train.csv'), str(shelf), str(tmp_path), str(rng.choice([0, 2])), mode]
    at = kill_at_commit(cmd, rng.randint(8, 120), during=i % 2 == 0)  # with a commit open, or right after one
    with open_shelf(shelf) as s, open_shelf(tmp_path/'clean.shelf') as clean:
        n = len(s)
        assert n == at[1] and 0 < n < 150 and not s.verify(), at
        np.testing.assert_array_equal(s.get_batch(s.keys())['image'], clean.get_batch(s.keys())['image'])
    r = build_shelf(df, shelf, compression='zstd-delta', gray=mode == 'gray', **kw)
    assert (r.existing, r.written) == (n, 150 - n)
    with open_shelf(shelf) as s, open_shelf(tmp_path/'clean.shelf') as clean:
        assert s.keys() == clean.keys() and not s.verify() and s.meta['compression'] == 'zstd-delta'
        np.testing.assert_array_equal(s.get_batch(s.keys())['image'], clean.get_batch(s.keys())['image'])
        with s.txn() as txn: assert all(record_layout(buf).fields[0].codec == 'zstd-delta' for _,buf in txn.cursor())
    assert shelf.stat().st_size < (tmp_path/'clean.shelf').stat().st_size

@pytest.mark.parametrize('codec', [None, 'zstd-delta'])
def test_big_batch_copies_on_threads_equal_items(tmp_path, codec):
    "A batch over `COPY_THREADS_FROM` bytes copies its raw fields on the decode threads: the same arrays, every field and value."
    import cv2
    from skimage import data
    from fastai_shelve.lmdb_batch import COPY_THREADS_FROM, DECODE_THREADS
    base = cv2.resize(data.camera(), (640, 480))
    with open_shelf(tmp_path/'b.shelf', 'n', compression=codec) as s:
        for i in range(24):
            s[f'k{i:02d}'] = {'image': np.roll(base, 7 * i, axis=1), 'mask': (np.roll(base, 5 * i, axis=0) > 128).astype(np.uint8),
                              'labels': np.array([i, 1], np.int8), 'view': 'PA' if i % 2 else 'AP'}
    with open_shelf(tmp_path/'b.shelf') as s:
        keys = [f'k{i:02d}' for i in (5, 0, 23, 11, 7, 2, 19, 13, 4, 22, 9, 16, 1, 20, 3)]
        assert len(keys) * base.nbytes >= COPY_THREADS_FROM or DECODE_THREADS == 1
        b = s.get_batch(keys)
        for i,k in enumerate(keys):
            r = s[k]
            for f in ('image', 'mask', 'labels'): np.testing.assert_array_equal(b[f][i], r[f])
            assert b['view'][i] == r['view']
        out = {'image': np.zeros((20, 480, 640), np.uint8)}  # rows of a bigger batch, as shards fill one
        s.get_batch(keys, fields=['image'], out=out, rows=range(5, 20), n=20)
        np.testing.assert_array_equal(out['image'][5:], b['image']); assert not out['image'][:5].any()
