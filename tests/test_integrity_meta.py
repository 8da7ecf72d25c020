"Integrity beyond the records (issue 28): checked metadata, one count, shards checked at open, 'n' that deletes only a shelf."
import os, json, shutil
import numpy as np, pandas as pd, pytest
from fastai_shelve.codec import ShelfError
from fastai_shelve.interface import DamagedStoreError
from fastai_shelve.store import open_shelf
from fastai_shelve.sharded_shelf import write_manifest, claim_shard

def _shelf(p, n=6):
    with open_shelf(p, 'c') as s:
        s.put_many({f'k{i}': {'image': np.full((8, 8), i, np.uint8)} for i in range(n)}, stats=np.ones((1, 256), np.int64))
        s.update_meta(stats_note='x')
        s.set_table(pd.DataFrame({'PatientID': [f'p{i}' for i in range(n)]}, index=[f'k{i}' for i in range(n)]))
    return p

def _edit(p, old:bytes, new:bytes):
    "One change in place (in every copy LMDB left of the page), the same length: what a flipped byte does."
    b = p.read_bytes(); assert b.count(old) >= 1; p.write_bytes(b.replace(old, new))

def test_metadata_changed_in_place_is_damage(tmp_path):
    p = _shelf(tmp_path/'s.shelf')
    _edit(p, b'"mean": [0.5]', b'"mean": [0.1]')
    with pytest.raises(DamagedStoreError, match=r"s\.shelf: damaged metadata: metadata 'meta'"): open_shelf(p)
    q = _shelf(tmp_path/'t.shelf')
    _edit(q, b'"p3"', b'"p1"')  # a patient moved across the split
    with open_shelf(q) as s:
        with pytest.raises(DamagedStoreError, match="metadata 'table'"): s.table
        with pytest.raises(DamagedStoreError): s.verify()

def test_pixel_statistics_are_added_not_overwritten(tmp_path):
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as a, open_shelf(p, 'c') as b:  # two writers, as two builds
        a.put_many({'x': {'image': np.zeros((2, 2), np.uint8)}}, stats=np.full((1, 256), 1))
        b.put_many({'y': {'image': np.zeros((2, 2), np.uint8)}}, stats=np.full((1, 256), 2))
    with open_shelf(p) as s: assert s.meta['stats']['hist'][0][:2] == [3, 3] and s.meta['n_records'] == 2 and s.verify() == []

def test_mode_n_refuses_what_is_not_a_shelf_file(tmp_path):
    f = tmp_path/'f.shelf'; os.mkfifo(f)
    link = tmp_path/'null.shelf'; link.symlink_to('/dev/null')  # the target is never touched: only the link is looked at
    (tmp_path/'d.shelf').mkdir(); (tmp_path/'x.csv').write_text('id\na\n')
    for p in (f, link, tmp_path/'d.shelf', tmp_path/'x.csv'):
        with pytest.raises(ShelfError, match="mode='n'"): open_shelf(p, 'n')
    assert f.is_fifo() and link.is_symlink() and (tmp_path/'x.csv').read_text() == 'id\na\n'
    _shelf(tmp_path/'ok.shelf')
    with open_shelf(tmp_path/'ok.shelf', 'n') as s: assert len(s) == 0

def _sharded(d, n=30):
    write_manifest(d, 2)
    for i in range(2): claim_shard(d, i)
    with open_shelf(d, 'w') as s: s.put_many({f'k{i}': {'image': np.full((4, 4), i, np.uint8)} for i in range(n)})
    return d

def test_shards_checked_at_open(tmp_path):
    d = _sharded(tmp_path/'sh')
    with open_shelf(d) as s: assert len(s) == 30 and s.verify() == [] and s.meta['n_records'] == 30
    shutil.copy(d/'shard-000.shelf', d/'shard-001.shelf')  # one shard copied over another
    with pytest.raises(DamagedStoreError, match='not the shard the manifest names'): open_shelf(d)
    (d/'shard-001.shelf').unlink(); (d/'shard-001.shelf-lock').unlink(missing_ok=True)
    open_shelf(d/'shard-001.shelf', 'c').close()  # an emptied shard: a new, empty shelf in its place
    with pytest.raises(DamagedStoreError, match='carries no shard id'): open_shelf(d)

def test_old_manifest_without_ids_is_named_unchecked(tmp_path):
    d = _sharded(tmp_path/'sh')
    m = json.loads((d/'manifest.json').read_text()); del m['ids'], m['crc32']; m['format_version'] = 3
    (d/'manifest.json').write_text(json.dumps(m))
    with open_shelf(d) as s: rep, n = s.verify(), len(s)
    assert rep == [] and any('UNCHECKED' in n for n in rep.notes) and rep.n == n > 0

def test_bad_build_arguments_refused_before_anything_is_written(tmp_path):
    from fastai_shelve.build import build_shelf
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/'a.png')
    df = pd.DataFrame({'id': ['a']})
    for kw in (dict(compression='zstd', level=99), dict(compression='lz4hc', level=99), dict(commit_every=0), dict(n_workers=-1)):
        with pytest.raises(ShelfError): build_shelf(df, tmp_path/'o.shelf', tmp_path, suff='.png', size=8, progress=False, **kw)
        assert not (tmp_path/'o.shelf').exists(), kw

def test_keys_that_are_not_str(tmp_path):
    with open_shelf(tmp_path/'s.shelf', 'c') as s:
        for f in (lambda: s[3], lambda: s.put_many({3: {'image': np.zeros(2, np.uint8)}})):
            with pytest.raises(ShelfError) as e: f()
            assert isinstance(e.value, TypeError)

def test_a_rebuild_after_the_files_were_deleted_under_an_open_handle(tmp_path):
    "Issue 27: the shelf deleted while a handle here holds it; a new shelf at the same path opens, the old handle still reads."
    p = _shelf(tmp_path/'s.shelf')
    old = open_shelf(p)
    p.unlink(); (tmp_path/'s.shelf-lock').unlink()
    with open_shelf(p, 'c') as s: s['new'] = {'image': np.zeros((2, 2), np.uint8)}; assert len(s) == 1
    assert len(old) == 6; old.close()
    with open_shelf(p) as s: assert s.keys() == ['new']

def _cli(*args):
    import subprocess, sys
    from pathlib import Path
    exe = str(Path(sys.executable).with_name('fastai-shelve'))
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)

def test_every_damage_is_exit_1_through_the_cli(tmp_path):
    "README: 1 means damage found. Truncated, broken metadata (each entry), a dropped, emptied or copied shard, an edited manifest."
    cases = {}
    p = _shelf(tmp_path/'trunc.shelf', n=40); b = p.read_bytes(); p.write_bytes(b[:len(b)//2]); cases['truncated'] = p
    for what, old, new in [('meta', b'"mean": [0.5]', b'"mean": [0.1]'), ('table', b'"p3"', b'"p1"'), ('order', b'"keys": ["k0"', b'"keys": ["k9"')]:
        p = _shelf(tmp_path/f'{what}.shelf')
        if what == 'order':
            with open_shelf(p, 'w') as s: s.set_order([f'k{i}' for i in range(6)])
        _edit(p, old, new); cases[what] = p
    d = _sharded(tmp_path/'drop'); (d/'shard-001.shelf').unlink(); cases['dropped shard'] = d
    d = _sharded(tmp_path/'empty'); (d/'shard-001.shelf').write_bytes(b''); cases['emptied shard (0 bytes)'] = d
    d = _sharded(tmp_path/'copy'); shutil.copy(d/'shard-000.shelf', d/'shard-001.shelf'); cases['copied shard'] = d
    d = _sharded(tmp_path/'man'); m = d/'manifest.json'; m.write_text(m.read_text().replace('"n_shards": 2', '"n_shards": 3'))
    cases['edited manifest'] = d
    for what, p in cases.items():
        for cmd in ('info', 'verify'):
            r = _cli(cmd, p)
            assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'damaged' in r.stderr, (what, cmd, r.returncode, r.stderr)

def test_a_truncated_file_is_damage_when_the_walk_is_skipped(tmp_path):
    "The size check at open (check=False: no walk) says damage too, as the walk's child does."
    p = _shelf(tmp_path/'s.shelf', n=40); b = p.read_bytes(); p.write_bytes(b[:len(b)//2])
    with pytest.raises(DamagedStoreError, match='is truncated'): open_shelf(p, check=False)
    with pytest.raises(DamagedStoreError, match='truncated'): open_shelf(p, 'w')
