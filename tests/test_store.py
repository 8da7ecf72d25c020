"The shelf store: round trips, batch reads, per-process handles, stdlib shelve files, bad stores."
import os, shelve, multiprocessing as mp
import numpy as np, pytest, lmdb, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from hypothesis.extra import numpy as hnp
from fastai_shelve.codec import encode_record, decode_record, RecordError, FormatVersionError, ShelfError, FORMAT_VERSION
from fastai_shelve.interface import PickleRefusedError, ShelfClosedError
from fastai_shelve.lmdb_shelf import Shelf
from fastai_shelve.std_shelf import StdShelf
from fastai_shelve.store import open_shelf

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]

def test_round_trip_dtypes_shapes(tmp_path):
    rng = np.random.default_rng(0)
    recs = {f'k{i}': {'a': (rng.random((3, i+1, 2)) * 100).astype(dt), 'scalar': dt(1), 'name': f'n{i}', 'n': i, 'f': 0.5}
            for i,dt in enumerate(DTYPES)}
    recs['empty'] = {'a': np.zeros((0, 5), np.float32)}
    with open_shelf(tmp_path/'s.shelf', 'c') as s: s.put_many(recs)
    with open_shelf(tmp_path/'s.shelf') as s:
        for k,r in recs.items():
            got = s[k]
            assert set(got) == set(r)
            for f,v in r.items():
                if isinstance(v, (np.ndarray, np.generic)):
                    assert got[f].dtype == np.asarray(v).dtype and got[f].shape == np.shape(v)
                    np.testing.assert_array_equal(got[f], v)
                else: assert got[f] == v

@settings(max_examples=150, deadline=None)
@given(hnp.arrays(st.sampled_from(['u1', 'i2', '<f4', '>i4', 'f8', '?']), hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)),
       st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8), st.booleans(), st.none()), max_size=3))
def test_codec_round_trip_fuzz(a, vals):
    rec = {'arr': a, **{f'v_{k}': v for k,v in vals.items()}}
    out = decode_record(encode_record(rec), check=True)
    np.testing.assert_array_equal(out['arr'], a); assert out['arr'].dtype == a.dtype
    assert {k:v for k,v in out.items() if k != 'arr'} == {k:v for k,v in rec.items() if k != 'arr'}

RECORDS = st.fixed_dictionaries({
    'image': hnp.arrays(st.sampled_from(['u1', '<i2', '>f4', '?']), hnp.array_shapes(min_dims=0, max_dims=3, max_side=12)),
    'labels': hnp.arrays('i1', st.integers(0, 11)),
    'note': st.one_of(st.none(), st.integers(-2**40, 2**40), st.text(max_size=6), st.lists(st.integers(), max_size=3))})

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.sampled_from([None, 'zstd', 'lz4']), st.data())
def test_damaged_records_raise_only_shelf_errors(rec, compression, data):
    "Valid records damaged past their magic number (header, lengths, offsets, buffers): a ShelfError or a record, never another exception."
    good = encode_record(rec, compression)
    head = 12 + int.from_bytes(good[4:8], 'little')  # the prefix and the JSON header: where a change is most telling
    b = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4), 'n_edits')):
        pos = data.draw(st.one_of(st.integers(3, min(head, len(b)) - 1), st.integers(3, len(b) - 1)), 'pos')
        kind = data.draw(st.sampled_from(['digit', 'set', 'cut', 'insert', 'delete']), 'kind')
        digits = [i for i in range(12, min(head, len(b))) if 48 <= b[i] <= 57]
        if kind == 'digit' and digits:  # a shape, an offset or a length changed, the JSON still valid
            b[data.draw(st.sampled_from(digits), 'at')] = data.draw(st.integers(48, 57), 'digit')
        elif kind in ('set', 'digit'): b[pos] = data.draw(st.integers(0, 255), 'value')
        elif kind == 'cut': del b[pos:]
        elif kind == 'insert': b[pos:pos] = data.draw(st.binary(min_size=1, max_size=8), 'inserted')
        else: del b[pos:pos + data.draw(st.integers(1, 8), 'deleted')]
        if len(b) <= 4: break
    b = bytes(b)
    try: out = decode_record(b)  # the read path: no checksum
    except ShelfError: out = None
    if out is not None: assert isinstance(out, dict)
    try: out = decode_record(b, check=True)  # verify's path: refused, or exactly the original
    except ShelfError: return
    assert _same(out, {**rec, 'image': np.asarray(rec['image'])}), (b == good)

def _same(a, b) -> bool:
    "Two decoded records equal field by field: bytes (a NaN equals itself), dtypes and shapes."
    return set(a) == set(b) and all(
        (isinstance(b[k], np.ndarray) and a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes())
        if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)

@pytest.mark.parametrize('compression', [None, 'zstd', 'lz4'])
def test_every_single_byte_change_is_refused_or_harmless(compression):
    "Every byte of a record, header included, set to three other values: refused by the checksum, or decodes to exactly the original."
    rec = {'image': np.arange(1000, dtype=np.uint8).reshape(20, 50), 'labels': np.ones(3, np.int8), 'note': 'x'}
    good = encode_record(rec, compression)
    refused = harmless = 0
    for pos in range(len(good)):
        for val in {0, 255, good[pos] ^ 1} - {good[pos]}:
            b = bytearray(good); b[pos] = val
            try: out = decode_record(bytes(b), check=True)
            except ShelfError: refused += 1; continue
            assert _same(out, rec), (pos, val)  # accepted: then it must be the original record
            harmless += 1
    assert refused > 2 * len(good) and harmless == 0  # the crc covers every byte but its own, which it is checked against

def test_get_many_order_and_missing(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s.put_many({f'k{i}': {'x': np.array([i])} for i in range(20)})
        keys = ['k7', 'k3', 'k19', 'k3']
        assert [int(r['x'][0]) for r in s.get_many(keys)] == [7, 3, 19, 3]
        # a mapping's KeyError, and a ShelfError naming the file, as every error of the package
        for get in (lambda: s.get_many(['k1', 'nope']), lambda: s['nope'], lambda: s.get_batch(['k1', 'nope'])):
            with pytest.raises(KeyError, match=f"'nope' not in .*s.shelf") as e: get()
            assert isinstance(e.value, ShelfError)
    with pytest.raises(ShelfError, match="s.shelf: mode must be"): open_shelf(tmp_path/'s.shelf', 'x')
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        assert 'k1' in s and 'nope' not in s and 5 not in s and '' not in s and 'x' * 600 not in s
        assert s.missing(['k1', '', 'x' * 600]) == ['', 'x' * 600]
        with pytest.raises(KeyError, match='1 to 511 bytes'): s.put_many({'x' * 600: {'x': np.array([1])}})
        b = s.get_batch(['k2', 'k5'])
        assert b['x'].shape == (2, 1) and b['x'][:, 0].tolist() == [2, 5]

def test_get_many_copies_out_of_the_transaction(tmp_path):
    "Arrays from get_many stay valid after the read transaction ends and more writes happen."
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s['a'] = {'x': np.full(10000, 7, np.uint8)}
        got = s.get_many(['a'])[0]['x']
        for i in range(50): s[f'b{i}'] = {'x': np.zeros(10000, np.uint8)}
        s['a'] = {'x': np.zeros(10000, np.uint8)}
        assert (got == 7).all()

def _seed_shelve(path, n=6):
    "A stdlib shelve laid out exactly as the seed notebook wrote training_data.db."
    rng = np.random.default_rng(1)
    recs = {f'1.2.826.0.1.{i}': {'image': rng.integers(0, 255, (32, 32), dtype=np.uint8),
                                 'labels': rng.integers(0, 2, (1, 11)).astype(np.int8)} for i in range(n)}
    with shelve.open(str(path)) as db:
        for k,v in recs.items(): db[k] = v
    return recs

def test_seed_shelve_refused_then_read(tmp_path):
    recs = _seed_shelve(tmp_path/'training_data.db')
    with pytest.raises(PickleRefusedError, match='runs their code'): open_shelf(tmp_path/'training_data.db')
    with open_shelf(tmp_path/'training_data.db', allow_pickle=True) as s:
        assert isinstance(s, StdShelf) and len(s) == len(recs) and sorted(s.keys()) == sorted(recs)
        for k,r in zip(list(recs), s.get_many(list(recs))):
            np.testing.assert_array_equal(r['image'], recs[k]['image']); assert r['labels'].shape == (1, 11)

class Boom:
    "A pickle that writes a marker file when loaded: what a malicious shelf would do."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (self.marker, 'w'))

def test_untrusted_pickle_never_runs(tmp_path):
    marker = tmp_path/'pwned'
    with shelve.open(str(tmp_path/'evil.db')) as db: db['x'] = Boom(str(marker))
    with pytest.raises(PickleRefusedError): open_shelf(tmp_path/'evil.db')
    s = StdShelf(tmp_path/'evil.db')  # even the class itself refuses to unpickle
    with pytest.raises(PickleRefusedError): s['x']
    assert len(s) == 1 and 'x' in s
    s.close()
    assert not marker.exists()

def _read_in_child(s, key, q):
    q.put((os.getpid(), int(s[key]['x'][0]), s._pid == os.getpid()))

@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_reads_in_worker_processes(tmp_path, method):
    with open_shelf(tmp_path/'s.shelf', 'c') as w: w.put_many({f'k{i}': {'x': np.array([i])} for i in range(5)})
    s = open_shelf(tmp_path/'s.shelf')
    assert s['k1']['x'][0] == 1  # the parent's handle is open and used before the child starts
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_read_in_child, args=(s, 'k3', q)); p.start()
    pid, val, own = q.get(timeout=300); p.join(60)  # hang guards: a spawned child imports this module, slow on a loaded machine
    assert p.exitcode == 0 and pid != os.getpid() and val == 3 and own  # the child opened its own handle
    assert s['k4']['x'][0] == 4 and s._pid == os.getpid()
    s.close()

def test_read_only_promise(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as w: w.put_many({f'k{i}': {'x': np.arange(100)} for i in range(30)})
    before = ((tmp_path/'s.shelf').read_bytes(), os.stat(tmp_path/'s.shelf').st_mtime_ns)
    from fastai_shelve.info import shelf_info
    with open_shelf(tmp_path/'s.shelf') as s:
        s.get_many(s.keys()); len(s); s.verify(); s.meta; shelf_info(tmp_path/'s.shelf')
        with pytest.raises(ShelfError, match='read-only'): s['new'] = {'x': np.arange(3)}
        with pytest.raises(ShelfError, match='read-only'): del s['k1']
    assert ((tmp_path/'s.shelf').read_bytes(), os.stat(tmp_path/'s.shelf').st_mtime_ns) == before
    with pytest.raises(ShelfClosedError): s['k1']

def test_newer_format_version_refused(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s['a'] = {'x': np.arange(3)}; s.update_meta(format_version=99, package_version='9.0')
    with pytest.raises(FormatVersionError, match='format 99'): open_shelf(tmp_path/'s.shelf')

def test_bad_stores_give_clear_errors(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s: s.put_many({f'k{i}': {'x': np.arange(5000)} for i in range(40)})
    data = (tmp_path/'s.shelf').read_bytes()
    (tmp_path/'cut.shelf').write_bytes(data[:len(data)//2])
    with pytest.raises(ShelfError, match='truncated'): open_shelf(tmp_path/'cut.shelf')
    (tmp_path/'rand.shelf').write_bytes(os.urandom(20000))
    with pytest.raises(ShelfError, match='is not a shelf'): open_shelf(tmp_path/'rand.shelf')
    (tmp_path/'empty.shelf').write_bytes(b'')
    with pytest.raises(ShelfError, match='is not a shelf'): open_shelf(tmp_path/'empty.shelf')
    env = lmdb.open(str(tmp_path/'plain.lmdb'), subdir=False); env.close()
    with pytest.raises(ShelfError, match='not a fastai_shelve shelf'): open_shelf(tmp_path/'plain.lmdb')
    with pytest.raises(ShelfError, match='is a directory'): open_shelf(tmp_path)

def test_lying_record_header(tmp_path):
    "A record whose header claims a bigger array than its bytes hold: a clear error naming the key."
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s['ok'] = {'x': np.arange(10, dtype=np.uint8)}
        good = encode_record({'x': np.arange(10, dtype=np.uint8)})
        liar = good.replace(b'[10]', b'[99]')
        s._commit([(b"liar", liar)])
        with pytest.raises(RecordError, match=r"key 'liar'.*claims"): s['liar']
        assert s.verify()[0][0] == 'liar' and len(s.verify()) == 1

def test_map_grows(tmp_path):
    with Shelf(tmp_path/'s.shelf', 'c', map_size=1<<20) as s:
        s.put_many({f'k{i}': {'x': np.zeros(200_000, np.uint8)} for i in range(20)})  # 4 MB into a 1 MB map
        assert len(s) == 20

@pytest.mark.skipif(os.geteuid() == 0, reason='root may read any file')
def test_no_read_permission(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s: s['a'] = {'x': np.arange(3)}
    os.chmod(tmp_path/'s.shelf', 0)
    with pytest.raises(PermissionError, match='no permission'): open_shelf(tmp_path/'s.shelf')

def test_opens_on_a_read_only_file_system(tmp_path):
    "A shelf uploaded as a Kaggle dataset sits on a read-only mount: opening must not need to write its lock file."
    import subprocess
    src, ro = tmp_path/'src', tmp_path/'ro'
    src.mkdir(); ro.mkdir()
    with open_shelf(src/'s.shelf', 'c') as s: s.put_many({f'k{i}': {'x': np.full(100, i)} for i in range(10)})
    (src/'s.shelf-lock').unlink()  # as uploaded: the data file only
    if subprocess.run(['mount', '--bind', str(src), str(ro)], capture_output=True).returncode: pytest.skip('cannot bind-mount here')
    try:
        if subprocess.run(['mount', '-o', 'remount,ro,bind', str(ro)], capture_output=True).returncode: pytest.skip('cannot remount read-only')
        with pytest.raises(OSError): (ro/'probe').write_text('x')  # really read-only
        with open_shelf(ro/'s.shelf') as s:
            assert len(s) == 10 and s['k7']['x'][0] == 7 and not s.verify()
        assert not (ro/'s.shelf-lock').exists()
    finally: subprocess.run(['umount', str(ro)], capture_output=True)

def test_garbled_dtype_in_header_is_a_record_error():
    "Found by the fuzzer: numpy's dtype parser raises SyntaxError on ','; the decoder must still say RecordError."
    b = encode_record({'image': np.zeros((2, 2), np.uint8)})
    for bad in (b'",u1"', b'"|u,"', b'"(1,"'):  # same length, so the header stays valid JSON
        with pytest.raises(RecordError, match='bad array entry'): decode_record(b.replace(b'"|u1"', bad))

@pytest.mark.parametrize('compression', ['zstd', 'lz4'])
def test_compressed_round_trip_odd_shapes(tmp_path, compression):
    "Images, masks, labels, odd shapes and empty arrays, compressed: the same arrays back, by get_many and get_batch."
    rng = np.random.default_rng(0)
    recs = {f'k{i}': {'image': rng.integers(0, 9, (37, 41), dtype=np.uint8), 'mask': (rng.random((37, 41)) > .5).astype(np.uint8),
                      'labels': rng.integers(0, 2, 11).astype(np.int8), 'empty': np.zeros((0, 3), np.float32),
                      'wide': rng.random((3, 300)).astype(np.float32)} for i in range(9)}
    with open_shelf(tmp_path/'z.shelf', 'c', compression=compression) as s:
        s.put_many(recs)
        for k, r in zip(recs, s.get_many(list(recs))): assert _same(r, recs[k])
        b = s.get_batch(list(recs))
        for f in ('image', 'mask', 'labels', 'empty', 'wide'):
            np.testing.assert_array_equal(b[f], np.stack([r[f] for r in recs.values()]))
        assert not s.verify()
        # Records sharing the first one's header (equal compressed sizes) after one that doesn't: each read with its own
        same = {f'same{i}': {'image': np.full((37, 41), 7, np.uint8)} for i in range(3)}
        other = {f'other{i}': {'image': rng.integers(0, 255, (37, 41), dtype=np.uint8)} for i in range(3)}
        s.put_many({**same, **other})
        ks = ['same0', 'other0', 'same1', 'other1', 'same2', 'other2']
        np.testing.assert_array_equal(s.get_batch(ks)['image'], np.stack([{**same, **other}[k]['image'] for k in ks]))
    assert (tmp_path/'z.shelf').stat().st_size < 1 << 20

def test_format_1_records_still_read(tmp_path):
    "A record of format 1 (crc over the buffers only), as shelves written before format 2 hold: reads and verifies."
    import struct, zlib
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    b = bytearray(encode_record({'image': img}))
    start = 12 + struct.unpack_from('<I', b, 4)[0]
    b[3] = 1; struct.pack_into('<I', b, 8, zlib.crc32(bytes(b[start:start+64])))  # what format 1 wrote
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s.update_meta(format_version=1)  # a shelf written before format 2
        s._commit([(b'old', bytes(b))])
    with open_shelf(tmp_path/'s.shelf') as s:
        np.testing.assert_array_equal(s['old']['image'], img)
        assert not s.verify() and s.meta['format_version'] == FORMAT_VERSION  # the write of a newer batch said so
    with open_shelf(tmp_path/'s.shelf', 'w') as s:
        s.update_meta(format_version=1); s['new'] = {'image': img}
        assert s.meta['format_version'] == FORMAT_VERSION and not s.verify()

def test_a_version_byte_flipped_upwards_is_damage_not_newer(tmp_path):
    "A record claiming a format its shelf was not written in is damaged; only the shelf's own metadata says 'newer'."
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        b = bytearray(encode_record({'x': np.arange(3)})); b[3] = FORMAT_VERSION + 1
        s._commit([(b'k', bytes(b))])
        with pytest.raises(RecordError, match='damaged'): s['k']

def test_write_side_refused_clearly(tmp_path):
    "Every backend implements the write side or refuses it with a ReadOnlyError that says why: never an AttributeError."
    from fastai_shelve.interface import ReadOnlyError
    _seed_shelve(tmp_path/'old.db')
    with open_shelf(tmp_path/'old.db', 'w', allow_pickle=True) as s:
        with pytest.raises(ReadOnlyError, match='convert it'): s.update_meta(x=1)
        with pytest.raises(ReadOnlyError, match='convert it'): s.set_table(None)
        s.put_many({'new': {'x': 1}}); assert s['new'] == {'x': 1}
    with open_shelf(tmp_path/'old.db', allow_pickle=True) as s:
        with pytest.raises(ReadOnlyError, match='read-only'): s.put_many({'k': {}})

def test_get_batch_into_given_arrays(tmp_path):
    "Filling arrays the caller gives (a reused batch, a shard's rows): checked against every record, the first included."
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s.put_many({'a': {'x': np.arange(4)}, 'b': {'x': np.arange(4) + 1}, 'c': {'x': np.arange(5)}})
        out = {'x': np.zeros((2, 4), np.int64)}
        assert s.get_batch(['a', 'b'], out=out) is out and out['x'][1].tolist() == [1, 2, 3, 4]
        with pytest.raises(ShelfError, match="key 'c' has other fields, shapes or dtypes"): s.get_batch(['c', 'a'], out={'x': np.zeros((2, 4), np.int64)})
        with pytest.raises(ShelfError, match="key 'a' has other fields"): s.get_batch(['a'], out={'x': np.zeros((1, 4), np.int32)})

def test_a_writer_opens_while_a_reader_of_this_process_holds_the_file(tmp_path):
    "One environment per file per process: a reader's is writable where its file is, so a build resumed while DataLoaders read works."
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as s: s['a'] = {'x': np.arange(3)}
    with open_shelf(p) as r:
        with open_shelf(p, 'w') as w: w['b'] = {'x': np.arange(3)}
        assert r.keys() == ['a', 'b'] and r.readonly
        with pytest.raises(__import__("fastai_shelve.interface").interface.ReadOnlyError): r["c"] = {'x': np.arange(3)}

def test_a_stdlib_shelve_value_that_is_no_record_is_a_bad_record(tmp_path):
    "A pickle holds anything: a value that is no dict of fields (or holds an array of objects) is a bad record naming its key."
    with shelve.open(str(tmp_path/'s.db')) as d:
        d['ok'], d['none'], d['objs'] = {'image': np.zeros((4, 4), np.uint8)}, None, {'image': np.array([1, 'x'], dtype=object)}
        d['intname'], d['tensor'] = {0: np.zeros(2, np.uint8)}, {'image': torch.zeros(2)}  # what `convert` refuses to write
    s = open_shelf(tmp_path/'s.db', allow_pickle=True)
    assert sorted(k for k, _ in s.verify()) == ['intname', 'none', 'objs', 'tensor']
    with pytest.raises(RecordError, match=r"s\.db: key 'none': not a record: a record must be a dict, not NoneType"): s.get_batch(['ok', 'none'])
    with pytest.raises(RecordError, match=r"key 'objs': not a record: field 'image': dtype object cannot be stored"): s['objs']
    with pytest.raises(RecordError, match=r"key 'tensor': not a record: field 'image': cannot store a Tensor"): s['tensor']
    assert s['ok']['image'].shape == (4, 4)
