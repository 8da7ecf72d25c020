"Integrity: a record bound to its key, `verify` finds every silent change, bounded memory on hostile records, no signals."
import os, sys, json, struct, zlib, subprocess, textwrap
from pathlib import Path
import numpy as np, pytest
from fastai_shelve.codec import (encode_record, decode_record, record_layout, RecordError, ShelfError, FORMAT_VERSION,
                                 RecordTooLargeError, bind_key, record_crc)
from fastai_shelve.info import shelf_info
from fastai_shelve.interface import DamagedStoreError, BadKeyError, ShelfNotFoundError
from fastai_shelve.sharded_shelf import MANIFEST, write_manifest
from fastai_shelve.store import open_shelf
sys.path.insert(0, str(Path(__file__).parent))
from integrity_sweep import sweep, show, KINDS, META_KINDS, SHARD_KINDS

def _img(i, side=32): return np.random.default_rng(i).integers(0, 255, (side, side), dtype=np.uint8)

def _shelf(path, n=10, side=32, **kw):
    with open_shelf(path, 'c', **kw) as s: s.put_many({f'k{i}': {'image': _img(i, side), 'labels': np.array([i % 2], np.int8)} for i in range(n)})
    return path

def _run(code, timeout=120, **env):
    "Run `code` in a fresh interpreter; (returncode, stdout, stderr)."
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env}, cwd=Path(__file__).parent.parent)
    return r.returncode, r.stdout, r.stderr

# 1. A record is bound to its key

def test_a_record_read_under_another_key_is_a_record_error(tmp_path):
    p = _shelf(tmp_path/'s.shelf')
    with open_shelf(p, 'w') as s:
        with s.txn() as txn: b1 = bytes(txn.get(b'k1'))
        s._commit([(b'k2', b1)])  # k1's bytes under k2: what a flipped key or page pointer serves
    with open_shelf(p) as s:
        with pytest.raises(RecordError, match=r"s\.shelf: key 'k2': .*another key"): s['k2']
        with pytest.raises(RecordError, match="'k2'"): s.get_batch(['k0', 'k2'])
        np.testing.assert_array_equal(s['k1']['image'], _img(1))
        assert [k for k,_ in s.verify()] == ['k2']

def test_a_damaged_header_is_a_record_error_naming_the_key_in_training(tmp_path):
    "A header whose field offset overlaps another field, or whose field is renamed: reads and training fail naming file and key."
    from fastai_shelve.data import ShelfDataLoaders
    p = _shelf(tmp_path/'s.shelf')
    def damage(key, old, new):  # one edit of the header's JSON, its length kept
        with open_shelf(p, 'w') as s:
            with s.txn() as txn: b = bytes(txn.get(key.encode()))
            assert len(old) == len(new) and b.count(old) == 1
            s._commit([(key.encode(), b.replace(old, new))])
    damage('k3', b'"labels","|i1",[1],1024]', b'"labels","|i1",[1], 960]')  # into the image's bytes
    with open_shelf(p) as s:
        with pytest.raises(RecordError, match=r"s\.shelf: key 'k3': header's fields 'image' and 'labels' overlap"): s['k3']
        with pytest.raises(RecordError, match="key 'k3'"): s.get_batch([f'k{i}' for i in range(6)])
    damage('k3', b'"labels","|i1",[1], 960]', b'"labels","|i1",[1],1025]')  # into its own padding: no field overlaps
    with open_shelf(p) as s:
        with pytest.raises(RecordError, match=r"key 'k3': header puts field 'labels' at an offset no encoder writes"): s['k3']
    damage('k3', b'"labels","|i1",[1],1025]', b'"labels","|i1",[1],1024]')
    damage('k5', b'"image"', b'"imagd"')
    dls = ShelfDataLoaders.from_shelf(p, bs=5, valid_pct=0, num_workers=0, shuffle=False)
    with pytest.raises(RecordError, match=r"s\.shelf: key 'k5' has no field 'image' \(it has \['imagd', 'labels'\]\)"): list(dls.train)

def test_bytes_from_encode_record_are_bound_on_write(tmp_path):
    "Bytes encoded elsewhere (a build worker) are bound to the key they are written under."
    b = encode_record({'image': _img(0)})
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s.put_many([('a', b), ('b', b)])
        rep = s.verify()
        assert not rep and rep.unbound == 0 and rep.n == 2
        np.testing.assert_array_equal(s['b']['image'], _img(0))
    with pytest.raises(RecordError, match='another key'): decode_record(b, key='a')  # encoded with no key: bound to none

def _format2(rec) -> bytes:
    "What format 2 wrote: no key check after the buffers, the crc over the record alone."
    b = bytearray(encode_record(rec))[:-4]; b[3] = 2
    struct.pack_into('<I', b, 8, zlib.crc32(bytes(b[12:]), zlib.crc32(bytes(b[:8]))))
    return bytes(b)

def test_older_records_read_and_verify_says_they_are_unbound(tmp_path):
    p = _shelf(tmp_path/'s.shelf', n=2)
    with open_shelf(p, 'w') as s: s._commit([(b'old', _format2({'image': _img(5)}))])
    with open_shelf(p) as s:
        np.testing.assert_array_equal(s['old']['image'], _img(5))
        rep = s.verify()
        assert rep == [] and rep.unbound == 1 and rep.n == 3 and not hasattr(s, 'unbound')  # the report says it, not the shelf
    rc, out, err = _run(f"from fastai_shelve.cli import main; main(['verify', {str(p)!r}])")
    assert rc == 0 and 'not bound to their keys' in out, (out, err)

def test_verify_checks_the_count_the_metadata_keeps(tmp_path):
    p = _shelf(tmp_path/'s.shelf')
    with open_shelf(p) as s: assert s.meta['n_records'] == 10 and s.meta['max_record_bytes'] == 32*32 + 1
    with open_shelf(p, 'w') as s: s.update_meta(n_records=11)  # the count is the B-tree's, in every commit: not settable
    with open_shelf(p) as s: assert s.meta['n_records'] == 10 and s.verify() == []
    import lmdb
    from fastai_shelve.codec import seal_meta, unseal_meta
    env = lmdb.open(str(p), subdir=False, max_dbs=2)  # a count that disagrees, validly sealed (a bug, not damage)
    with env.begin(write=True) as txn:
        db = env.open_db(b'meta', txn=txn); m = unseal_meta('meta', txn.get(b'meta', db=db))[0]
        txn.put(b'meta', seal_meta('meta', {**m, 'n_records': 11}), db=db)
    env.close()
    with open_shelf(p) as s:
        with pytest.raises(DamagedStoreError, match='10 keys listed but the metadata says 11'): s.verify()

def test_damage_sweep_quick(tmp_path):
    "A few copies of each damage kind: none wrong silently, no signal, no hang, only ShelfErrors."
    res = sweep(tmp_path, 2)
    for kind, t in res['table'].items():
        assert t['wrong'] == t['signal'] == t['hang'] == t['non_shelf'] == 0, (kind, show(res['table']), res['details'])

def test_metadata_and_shard_damage_sweep_quick(tmp_path):
    "One copy of each metadata and shard damage: every read, info and verify a ShelfError, no signal, never changed metadata read."
    res = sweep(tmp_path, 1, kinds=META_KINDS + SHARD_KINDS)
    for kind, t in res['table'].items():
        assert t['wrong'] == t['signal'] == t['hang'] == t['non_shelf'] == t['intact'] == 0, (kind, show(res['table']), res['details'])

@pytest.mark.slow
@pytest.mark.parametrize('compression', [None, 'zstd'])
def test_metadata_and_shard_damage_sweep(tmp_path, compression):
    res = sweep(tmp_path, 12, kinds=META_KINDS + SHARD_KINDS, compression=compression)
    print(show(res['table']))
    for kind, t in res['table'].items():
        assert t['wrong'] == t['signal'] == t['hang'] == t['non_shelf'] == 0, (kind, show(res['table']))

@pytest.mark.slow
@pytest.mark.parametrize('compression, full', [(None, False), ('zstd', False), (None, True)])
def test_damage_sweep(tmp_path, compression, full):
    res = sweep(tmp_path, 40, compression=compression, full=full)
    if full: assert all(t['read_unchecked'] == 0 for t in res['table'].values()), show(res['table'])
    print(show(res['table']))
    for kind, t in res['table'].items():
        assert t['wrong'] == t['signal'] == t['hang'] == t['non_shelf'] == 0, (kind, show(res['table']))

# 3. A header is a promise about memory

BOMB = '''
import sys, resource, numpy as np
from fastai_shelve.store import open_shelf
from fastai_shelve.info import shelf_info
from fastai_shelve.codec import ShelfError
s, k = open_shelf(sys.argv[1]), sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for what, f in [('get', lambda: s[k]), ('batch', lambda: s.get_batch([k] * 8)), ('verify', lambda: print('ShelfError', s.verify())),
                ('info', lambda: shelf_info(sys.argv[1]))]:
    try: f()
    except ShelfError as e: print('ShelfError', e)
    print(what, 'grew', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
'''

def _bomb_frame(n=1 << 30, content_size=True) -> bytes:
    "A zstd frame of `n` zeros, made a chunk at a time (33 KB for 1 GiB)."
    import zstandard
    c = zstandard.ZstdCompressor(write_content_size=content_size).compressobj(size=n if content_size else -1)
    chunk = bytes(16 << 20)
    return b''.join([c.compress(chunk) for _ in range(n // len(chunk))] + [c.flush()])

def _record(header:dict, data:bytes) -> bytes:
    "A format-3 record with header `header` and buffers `data`, however much the header promises (crc left 0)."
    head = json.dumps(header, separators=(',', ':')).encode()
    start = -(-(12 + len(head)) // 64) * 64
    out = bytearray(start) + data + bytes(4)
    out[12:12+len(head)] = head; out[12+len(head):start] = b' ' * (start - 12 - len(head))
    struct.pack_into('<3sBII', out, 0, b'FSR', FORMAT_VERSION, start - 12, 0)
    struct.pack_into('<I', out, 8, record_crc(out))  # a valid crc, bound to no key: only the frame is wrong
    return bytes(out)

def _splice(rec_bytes:bytes, frame:bytes) -> bytes:
    "A compressed record with its image's stored bytes replaced by `frame`; its header still declares the original size."
    lay = record_layout(rec_bytes)
    f = lay.fields[0]
    h = bytes(rec_bytes[12:lay.start]).replace(f'{f.offset},{f.stored},'.encode(), f'{f.offset},{len(frame)},'.encode())
    assert len(h) <= lay.start - 12 + 64
    hd = json.loads(h); hd['a'] = hd['a'][:1]  # the image alone: the frame takes the bytes the other fields lay in
    head = json.dumps(hd).encode()
    start = -(-(12 + len(head)) // 64) * 64
    out = bytearray(start) + frame + bytes(-len(frame) % 64) + bytes(4)
    out[12:12+len(head)] = head; out[12+len(head):start] = b' ' * (start - 12 - len(head))
    struct.pack_into('<3sBII', out, 0, b'FSR', FORMAT_VERSION, start - 12, 0)
    struct.pack_into('<I', out, 8, record_crc(out))  # a valid crc, bound to no key: only the frame is wrong
    return bytes(out)

@pytest.mark.parametrize('content_size', [True, False])
def test_zstd_bomb_refused_in_bounded_memory(tmp_path, content_size):
    "33 KB of zstd that expands to 1 GiB under a header declaring 4 KiB: a ShelfError, and RSS grows by a few MB at most."
    p = _shelf(tmp_path/'s.shelf', n=3, side=64, compression='zstd')
    with open_shelf(p, 'w') as s:
        with s.txn() as txn: good = bytes(txn.get(b'k0'))
        bomb = _splice(good, _bomb_frame(content_size=content_size))
        assert len(bomb) < 64 << 10 and record_layout(bomb).fields[0].nbytes == 64*64
        s._commit([(b'k1', bind_key(bomb, 'k1'))])  # bound to its key: the frame itself must be refused
    r = subprocess.run([sys.executable, '-c', BOMB, str(p), 'k1'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert sum('ShelfError' in l and "'k1'" in l and ('expands to' in l or 'does not decompress' in l) for l in lines) >= 3, r.stdout  # get, get_batch, verify
    assert all(int(l.split('grew')[-1]) < 64 << 10 for l in lines if 'grew' in l), r.stdout  # KiB: far from 1 GiB

def test_a_header_declaring_more_than_the_shelf_allows(tmp_path):
    "A 1 TiB shape, an overflowing shape, a shelf limit: RecordErrors before any allocation."
    p = _shelf(tmp_path/'s.shelf', n=2, side=8)
    tib = _record({'a': [['image', '|u1', [1 << 20, 1 << 20], 0, 64, 'lz4']], 'v': {}}, bytes(64))
    over = _record({'a': [['image', '|u1', [1 << 32] * 3, 0, 64, 'zstd']], 'v': {}}, bytes(64))
    with pytest.raises(RecordError, match='bad array entry'): decode_record(over)
    with open_shelf(p, 'w') as s:
        s._commit([(b'tib', tib), (b'big', encode_record({'image': np.zeros((64, 64), np.uint8)}, 'lz4'))])
        s.update_meta(max_record_bytes=8*8 + 1)  # what the build wrote: a header may not promise more
    with open_shelf(p) as s:
        for k in ('tib', 'big'):
            with pytest.raises(RecordError, match=f"'{k}'.*(bad array entry|more than the 65)"): s[k]
            with pytest.raises(RecordError): s.get_batch([k, k])
        assert sorted(k for k,_ in s.verify()) == ['big', 'tib']

def test_lz4_that_expands_past_its_header(tmp_path):
    import lz4.block
    b = bytearray(encode_record({'image': np.zeros((64, 64), np.uint8)}, 'lz4'))
    lay = record_layout(bytes(b)); f = lay.fields[0]
    big = lz4.block.compress(bytes(1 << 20), store_size=False)
    with pytest.raises(RecordError): decode_record(_splice(bytes(b), big))

# 5. Every error a ShelfError naming the file

def test_deep_json_header_and_metadata(tmp_path):
    deep = b'{"a":[],"v":{"x":' + b'[' * 100000 + b']' * 100000 + b'}}'
    rec = bytearray(64 + len(deep) + 4); rec[12:12+len(deep)] = deep
    struct.pack_into('<3sBII', rec, 0, b'FSR', FORMAT_VERSION, len(rec) - 16, 0)
    with pytest.raises(RecordError, match='unreadable header'): decode_record(bytes(rec))
    mid = b'{"a":[],"v":{"x":' + b'[' * 100 + b']' * 100 + b'}}'
    rec2 = bytearray(len(mid) + 16); rec2[12:12+len(mid)] = mid; struct.pack_into('<3sBII', rec2, 0, b'FSR', FORMAT_VERSION, len(mid), 0)
    with pytest.raises(RecordError, match='nest deeper'): decode_record(bytes(rec2))
    p = _shelf(tmp_path/'s.shelf', n=1)
    with open_shelf(p, 'w') as s: s._commit([(b'deep', bytes(rec))])
    with open_shelf(p) as s:
        with pytest.raises(RecordError, match=r"s\.shelf: key 'deep'"): s['deep']
    rc, out, err = _run(f"from fastai_shelve.cli import main; main(['info', {str(p)!r}])")
    assert 'Traceback' not in err

def test_keys_must_be_valid_utf8(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        with pytest.raises(BadKeyError, match='UTF-8'): s['\ud800x'] = {'image': _img(0)}
        with pytest.raises(KeyError): s['\ud800x']
        assert '\ud800x' not in s and len(s) == 0

def test_a_later_record_lacking_a_value_is_a_shelf_error(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        s['a'] = {'image': _img(0), 'note': 'x'}; s['b'] = {'image': _img(1)}
        with pytest.raises(ShelfError, match="'b' lacks values"): s.get_batch(['a', 'b'])

def test_sharded_folder_errors_are_shelf_errors(tmp_path):
    d = tmp_path/'sh'; d.mkdir()
    (d/MANIFEST).write_text(json.dumps(dict(format='fastai_shelve shards', n_shards=0, shards=[])))
    with pytest.raises(ShelfError, match='at least one'): open_shelf(d)
    write_manifest(tmp_path/'two', 2)
    _shelf(tmp_path/'two'/'shard-000.shelf', n=1)
    with pytest.raises(ShelfNotFoundError, match='shard-001'): open_shelf(tmp_path/'two')
    os.symlink('loop', tmp_path/'two'/'loop'); os.symlink('loop', tmp_path/'loop2')
    (tmp_path/'two'/'shard-001.shelf').symlink_to(tmp_path/'two'/'shard-001.shelf')
    with pytest.raises(ShelfError, match='shard-001'): open_shelf(tmp_path/'two')

def test_fifo_named_like_a_shelf_is_refused_at_once(tmp_path):
    f = tmp_path/'f.shelf'; os.mkfifo(f)
    code = f"""
    from fastai_shelve.store import open_shelf
    from fastai_shelve.info import shelf_info
    from fastai_shelve.codec import ShelfError
    from fastai_shelve.build import build_shelf
    import pandas as pd
    for call in (lambda: open_shelf({str(f)!r}), lambda: shelf_info({str(f)!r}), lambda: open_shelf({str(f)!r}, 'c'),
                 lambda: build_shelf(pd.DataFrame({{'id': ['a']}}), {str(f)!r}, progress=False)):
        try: call(); print('no error')
        except ShelfError as e: print('ShelfError', e)
    """
    rc, out, err = _run(code, timeout=60)
    assert rc == 0 and out.count('not a regular file') == 4, (out, err)

# 4. The training path never dies by a signal

def test_a_file_shrunk_under_an_open_reader_is_an_error_not_sigbus(tmp_path):
    p = _shelf(tmp_path/'s.shelf', n=40, side=128)
    code = f"""
    import os
    from fastai_shelve.store import open_shelf
    from fastai_shelve.codec import ShelfError
    s = open_shelf({str(p)!r}); s['k3']; s.get_batch(['k1', 'k2'])
    os.truncate({str(p)!r}, os.path.getsize({str(p)!r}) // 3)  # overwritten with cp while a notebook trains
    for f in (lambda: s['k39'], lambda: s.get_batch(['k38', 'k39']), lambda: len(s)):
        try: f(); print('read')
        except ShelfError as e: print('ShelfError', e)
    """
    rc, out, err = _run(code)
    assert rc == 0 and out.count('is truncated') == 3, (rc, out, err)

def test_a_damaged_file_is_walked_once_per_version_before_reading(tmp_path):
    "open_shelf walks a new file version in a child (remembered), so LMDB's abort on a damaged page is an error here."
    p = _shelf(tmp_path/'s.shelf', n=40, side=128)
    b = bytearray(p.read_bytes()); b[2*4096+16:2*4096+4096] = os.urandom(4096-16)  # garble a page's nodes
    (tmp_path/'d.shelf').write_bytes(b)
    code = f"""
    from fastai_shelve.store import open_shelf
    from fastai_shelve.codec import ShelfError
    try:
        s = open_shelf({str(tmp_path/'d.shelf')!r})
        for i in range(40): s[f'k{{i}}']
        print('read')
    except (ShelfError, KeyError) as e: print('error', type(e).__name__)
    """
    rc, out, err = _run(code, XDG_CACHE_HOME=str(tmp_path/'cache'))
    assert rc >= 0, err

def test_verify_on_a_full_disk_without_a_lock_file(tmp_path):
    "A healthy shelf on a full disk, no lock file yet: not called damaged (the child would fault mapping a lock without blocks)."
    src = _shelf(tmp_path/'s.shelf', n=5)
    mnt = tmp_path/'mnt'; mnt.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', str(mnt)], capture_output=True).returncode:
        pytest.skip('cannot mount a small tmpfs here')
    try:
        (mnt/'s.shelf').write_bytes(src.read_bytes())
        with open(mnt/'fill', 'wb', buffering=0) as f:
            try:
                while True: f.write(bytes(4096))
            except OSError: pass
        rc, out, err = _run(f"from fastai_shelve.cli import main; main(['verify', {str(mnt/'s.shelf')!r}])", XDG_CACHE_HOME=str(tmp_path/'c'))
        assert 'damaged' not in err and rc in (0, 2), (rc, out, err)
        assert rc == 0 or 'no space left' in err, err
    finally: subprocess.run(['umount', str(mnt)], capture_output=True)

# 2. Shards carry an identity

def _sharded(path, n_shards=2, n=40, prefix='k'):
    from fastai_shelve.sharded_shelf import claim_shard, count_shards, shard_of
    write_manifest(path, n_shards)
    for i in range(n_shards): claim_shard(path, i)
    with open_shelf(path, 'w') as s: s.put_many({f'{prefix}{i}': {'image': _img(i, 8)} for i in range(n)})
    count_shards(path)
    return path

def _cli(capsys, *args):
    "(exit code, stdout, stderr) of the CLI run in this process."
    from fastai_shelve.cli import main
    try: main(list(args)); rc = 0
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err

def test_sharded_folder_edits_are_found(tmp_path, capsys):
    import shutil
    from fastai_shelve.sharded_shelf import shard_of
    base = _sharded(tmp_path/'base')
    rc, out, err = _cli(capsys, 'verify', str(base))
    assert rc == 0 and '40 of 40 records ok' in out, (out, err)
    def variant(name):
        d = tmp_path/name; shutil.copytree(base, d); return d
    d = variant('swapped')  # two shards swapped
    os.rename(d/'shard-000.shelf', d/'tmp'); os.rename(d/'shard-001.shelf', d/'shard-000.shelf'); os.rename(d/'tmp', d/'shard-001.shelf')
    rc, out, err = _cli(capsys, 'verify', str(d)); assert rc == 1 and 'not the shard the manifest names' in err, (out, err)
    d = variant('twice')  # a shard listed twice
    m = json.loads((d/MANIFEST).read_text()); m['shards'][1] = m['shards'][0]; (d/MANIFEST).write_text(json.dumps(m))
    rc, out, err = _cli(capsys, 'verify', str(d)); assert rc == 1 and 'damaged manifest' in err, (out, err)  # edited: its checksum
    d = variant('stray')  # a key in the wrong shard
    k = next(f'x{i}' for i in range(100) if shard_of(f'x{i}', 2) == 1)
    with open_shelf(d/'shard-000.shelf', 'w') as s: s[k] = {'image': _img(0, 8)}
    rc, out, err = _cli(capsys, 'verify', str(d)); assert rc == 1 and 'holds 1 key of other shards' in err, (out, err)
    d = variant('foreign')  # shard 1 replaced by another dataset's shard built with the same settings
    other = _sharded(tmp_path/'other', prefix='k')
    shutil.copy(other/'shard-001.shelf', d/'shard-001.shelf')
    rc, out, err = _cli(capsys, 'verify', str(d)); assert rc == 1 and 'not the shard the manifest names' in err, (out, err)
    d = variant('fewer')  # a key deleted from one shard: a write, not damage (the counts are the shards' own)
    with open_shelf(d/'shard-001.shelf', 'w') as s: del s[s.keys()[0]]
    rc, out, err = _cli(capsys, 'verify', str(d)); assert rc == 0 and '39 of 39' in out, (out, err)

# 6. Build settings checked before anything is written

def _images(d, n=3):
    from PIL import Image
    d.mkdir(exist_ok=True)
    for i in range(n): Image.fromarray(_img(i, 40)).save(d/f'a{i}.png')
    (d/'list.csv').write_text('id\n' + ''.join(f'a{i}\n' for i in range(n)))
    return d/'list.csv'

@pytest.mark.parametrize('args, says', [(['--size', '0'], 'size must be'), (['--size', '-5'], 'size must be'),
                                        (['--shortest-side', '-1'], 'shortest_side must be'), (['--size', '100000'], 'size must be'),
                                        (['--size', '64', '--shortest-side', '32'], 'one resize mode'),
                                        (['--size', '64', '--shards', '-1'], '--shards must be')])
def test_bad_build_settings_refused_before_writing(tmp_path, capsys, args, says):
    csv = _images(tmp_path/'img')
    rc, out, err = _cli(capsys, 'build', str(csv), str(tmp_path/'o.shelf'), '--path', str(tmp_path/'img'), '--suff', '.png', '--quiet', *args)
    assert rc == 2 and says in err and 'Traceback' not in err, (rc, out, err)
    assert not (tmp_path/'o.shelf').exists()

def test_a_build_that_wrote_nothing_leaves_no_settings(tmp_path):
    from fastai_shelve.build import build_shelf
    import pandas as pd
    csv = _images(tmp_path/'img')
    r = build_shelf(pd.read_csv(csv), tmp_path/'o.shelf', path=tmp_path/'img', suff='.jpeg', size=32, n_workers=0, progress=False)
    assert len(r.bad) == 3 and r.written == 0
    r = build_shelf(pd.read_csv(csv), tmp_path/'o.shelf', path=tmp_path/'img', suff='.png', size=24, n_workers=0, progress=False)
    assert r.written == 3
    with open_shelf(tmp_path/'o.shelf') as s: assert s['a1']['image'].shape == (24, 24) and s.meta['build']['size'] == 24

def test_a_build_that_wrote_nothing_keeps_settings_another_build_committed(tmp_path):
    "Build A ends with no record while build B commits records and settings: A clears `build` only in a transaction that sees none."
    from fastai_shelve.build import _Writer
    p = tmp_path/'o.shelf'
    with open_shelf(p, 'c') as a:
        a.update_meta(build={'size': 24})
        def other_build():  # build B, another process's handle, commits between A's last commit and A's end
            with open_shelf(p, 'w') as b: b.put_many({'x': {'image': _img(0, 8)}}, meta={'build': {'size': 24}})
        class AsB:  # A's shelf, B committing at the first thing A's writer asks of it when it ends
            def __init__(self): self.done = False
            def _b(self):
                if not self.done: self.done = True; other_build()
            def __len__(self): n = len(a); self._b(); return n
            def update_meta(self, **kw): self._b(); return a.update_meta(**kw)
        with _Writer(AsB(), 8): pass
    with open_shelf(p) as s: assert s.keys() == ['x'] and s.meta.get('build') == {'size': 24}

def test_new_shelf_on_a_read_only_file_system_is_a_shelf_error(tmp_path):
    from fastai_shelve.interface import ReadOnlyError
    src, ro = tmp_path/'src', tmp_path/'ro'
    src.mkdir(); ro.mkdir(); _shelf(src/'s.shelf', n=2)
    if subprocess.run(['mount', '--bind', str(src), str(ro)], capture_output=True).returncode: pytest.skip('cannot bind-mount here')
    try:
        if subprocess.run(['mount', '-o', 'remount,ro,bind', str(ro)], capture_output=True).returncode: pytest.skip('cannot remount read-only')
        with pytest.raises(ReadOnlyError, match=r"s\.shelf: cannot replace it"): open_shelf(ro/'s.shelf', 'n')
        with pytest.raises(ReadOnlyError, match='not writable'): open_shelf(ro/'new.shelf', 'c')
        # a rebuild there (a Kaggle dataset's /kaggle/input): why, and what to do, before and after reading it in this process
        ro_fs = r"s\.shelf: cannot write to it: its file system is read-only: copy it to a writable folder"
        with pytest.raises(ReadOnlyError, match=ro_fs): open_shelf(ro/'s.shelf', 'c')
        with open_shelf(ro/'s.shelf') as r:
            assert len(r) == 2
            with pytest.raises(ReadOnlyError, match=ro_fs): open_shelf(ro/'s.shelf', 'w')
        from PIL import Image
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/'a.png'); (tmp_path/'t.csv').write_text('id\na\n')
        out = subprocess.run([sys.executable, '-m', 'fastai_shelve.cli', 'build', str(tmp_path/'t.csv'), str(ro/'s.shelf'), '--path',
                              str(tmp_path), '--suff', '.png'], capture_output=True, text=True)
        assert out.returncode == 2 and 'its file system is read-only' in out.stderr and 'Traceback' not in out.stderr, out.stderr
    finally: subprocess.run(['umount', str(ro)], capture_output=True)

def test_sharded_keys_must_be_valid_utf8(tmp_path):
    d = _sharded(tmp_path/'sh', n=4)
    with open_shelf(d, 'w') as s:
        with pytest.raises(BadKeyError): s['\udc80'] = {'image': _img(0, 8)}
        with pytest.raises(BadKeyError): s.get_many(['k1', '\udc80'])
        with pytest.raises(BadKeyError): del s['\udc80']
        assert '\udc80' not in s and len(s) == 4

def test_full_check_at_open_refuses_records_with_changed_pixels(tmp_path):
    "check='full' checks every record's crc once per file version, in the child: reads then refuse the bad ones."
    p = _shelf(tmp_path/'s.shelf', n=10, side=64)
    b = bytearray(p.read_bytes()); at = b.find(_img(4, 64).tobytes()[:64]); b[at + 100] ^= 0xFF
    (tmp_path/'d.shelf').write_bytes(b)
    with open_shelf(tmp_path/'d.shelf') as s: assert not np.array_equal(s['k4']['image'], _img(4, 64))  # reads don't check the crc
    with open_shelf(tmp_path/'d.shelf', check='full') as s:
        with pytest.raises(RecordError, match=r"key 'k4': checksum mismatch.*full check"): s['k4']
        with pytest.raises(RecordError, match="'k4'"): s.get_batch(['k3', 'k4'])
        np.testing.assert_array_equal(s['k5']['image'], _img(5, 64))
    with open_shelf(tmp_path/'d.shelf', check='full') as s:  # remembered: no second walk, the same answer
        with pytest.raises(RecordError, match='full check'): s['k4']

def test_settings_an_older_build_kept_still_read():
    "Settings checked on a new build; an older shelf's (two resize modes, as the CLI once allowed) still read as built."
    from fastai_shelve.images import BuildSettings
    s = BuildSettings.from_meta(dict(schema=2, size=None, shortest_side=100, max_side=200, gray=True, scale='minmax', frame=0))
    assert s.out_size(400, 300) == (133, 100)
    with pytest.raises(ShelfError, match='one resize mode'): BuildSettings(shortest_side=100, max_side=200)

def _big_node_sizes(data:bytes, keys) -> dict:
    "key → offsets of the high 16 bits of its big (overflow) value's stored size, in leaf pages of `data` (every copy LMDB left)."
    res = {}
    for k in keys:
        kb = k.encode(); at = data.find(kb)
        while at >= 0:
            pg = at // 4096 * 4096
            if at - pg >= 24 and struct.unpack_from('<H', data, at-2)[0] == len(kb) and struct.unpack_from('<H', data, pg+10)[0] & 2 \
               and struct.unpack_from('<H', data, at-4)[0] & 1:  # a leaf node (ksize before the key) with F_BIGDATA
                res.setdefault(k, []).append(at - 6)
            at = data.find(kb, at + 1)
    return res

READS = dict(get="open_shelf(p)[k]", batch="open_shelf(p).get_batch([k, k])", info="shelf_info(p)", verify="open_shelf(p).verify()")

def _written_in_place(tmp_path, what):
    "Finding 5: a record's stored size raised through a MAP_SHARED mapping after its version was walked (inode, size, times and "
    "meta pages unchanged: the walk is skipped); then `what` in a child: (returncode, stdout, stderr), a SIGBUS a negative code."
    import mmap
    p = _shelf(tmp_path/'s.shelf', n=12, side=96)  # 96x96: each value on overflow pages
    env = dict(XDG_CACHE_HOME=str(tmp_path/'cache'), FASTAI_SHELVE_CACHE=str(tmp_path/'cache'))
    k, ats = sorted(_big_node_sizes(p.read_bytes(), [f'k{i}' for i in range(12)]).items())[-1]
    for attempt in range(3):  # the kernel may write the dirty page back between the walk and the write: then its times change
        with open(p, 'r+b') as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED) as m:
            for at in ats: m[at] = m[at]  # dirty the leaf's page first: the write fault is what updates mtime and ctime
            rc, out, err = _run(f"from fastai_shelve.store import open_shelf; open_shelf({str(p)!r})[{k!r}]", **env)  # walked, remembered
            assert rc == 0, err
            before = os.stat(p)
            for at in ats: m[at:at+2] = struct.pack('<H', 0x40)  # the value's size + 4 MiB: past the file's end, within LMDB's map
            after = os.stat(p)
            if (before.st_mtime_ns, before.st_ctime_ns, before.st_size) != (after.st_mtime_ns, after.st_ctime_ns, after.st_size): continue
            if what == 'cli verify':
                r = subprocess.run([str(Path(sys.executable).with_name('fastai-shelve')), 'verify', str(p)], capture_output=True, text=True,
                                   timeout=120, env={**os.environ, **env})
                return r.returncode, r.stdout, r.stderr
            return _run(f"""
                from fastai_shelve.store import open_shelf
                from fastai_shelve.info import shelf_info
                from fastai_shelve.codec import ShelfError
                p, k = {str(p)!r}, {k!r}
                try: {READS[what]}; print('read')
                except ShelfError as e: print('ShelfError', e)""", **env)
    pytest.fail('the page was written back each time: the change in place could not keep the times')

@pytest.mark.parametrize('what', ['get', 'batch', 'info', 'verify', 'cli verify'])
def test_a_file_written_in_place_is_an_error_not_sigbus(tmp_path, what):
    "The remembered version covers the B-tree's pages: the changed one is walked again, so every read is a ShelfError (CLI exit 1)."
    rc, out, err = _written_in_place(tmp_path, what)
    if what == 'cli verify': assert rc == 1 and 'damaged store' in err and err.count('\n') == 1, (rc, out, err)
    else: assert rc == 0 and out.startswith('ShelfError') and 'damaged store' in out, (rc, out, err)
