"The typed metadata (issue 30): one `ShelfMeta` read from old shelves' dicts, written back unchanged; `verify`'s report."
import json, subprocess, sys
from pathlib import Path
import numpy as np, lmdb, pytest
from fastai_shelve.codec import ShelfError, FormatVersionError, FORMAT_VERSION, seal_meta
from fastai_shelve.meta import ShelfMeta
from fastai_shelve.images import record_meta
from fastai_shelve.interface import VerifyReport
from fastai_shelve.store import open_shelf

def _old_shelf(p, meta:dict, sealed=False):
    "A shelf as format 2 wrote it: its metadata a plain JSON dict with no checksum (or `sealed`, as format 4 on writes it)."
    env = lmdb.open(str(p), subdir=False, max_dbs=2)
    recs, mdb = env.open_db(b'records'), env.open_db(b'meta')
    with env.begin(write=True) as txn: txn.put(b'meta', seal_meta('meta', meta) if sealed else json.dumps(meta).encode(), db=mdb)
    env.close()
    return p

OLD = dict(format='fastai_shelve', format_version=2, created='2026-01-01T00:00:00', package_version='0.0.9', n_records=0,
           label_kind='multi', label_names=['a', 'b'], valid_col=None, my_own_key={'x': 1})

def test_an_old_shelfs_dict_reads_as_fields(tmp_path):
    with open_shelf(_old_shelf(tmp_path/'old.shelf', OLD)) as s:
        m = s.meta
        assert isinstance(m, ShelfMeta) and m.format_version == 2 and m.label_names == ['a', 'b'] and m.label_kind == 'multi'
        assert m.vocab is None and m.build is None and m.stats is None  # missing: defaulted
        assert m.extra == {'my_own_key': {'x': 1}} and m['my_own_key'] == {'x': 1}  # unknown: kept
        assert dict(m) == OLD and 'valid_col' in m and 'vocab' not in m  # stored as None is not never stored

def test_a_write_keeps_what_it_does_not_know(tmp_path):
    p = _old_shelf(tmp_path/'old.shelf', OLD)
    with open_shelf(p, 'w') as s: s.put_many({'k': {'image': np.zeros((2, 2), np.uint8)}}); s.update_meta(vocab=None, codes=['x'])
    with open_shelf(p) as s:
        m = s.meta
        assert m.format_version == FORMAT_VERSION and m.n_records == 1 and m.max_record_bytes == 4 and m.codes == ['x']
        assert m.extra == {'my_own_key': {'x': 1}} and m.label_names == ['a', 'b'] and 'vocab' in m and m.vocab is None
        assert s.verify() == []

def test_round_trip():
    d = dict(OLD, stats={'mean': [0.5]}, build=dict(schema=3, size=[4, 4]), compression='zstd', compression_level=3, parts=['table'])
    m = ShelfMeta.from_meta(d, 'x.shelf')
    assert ShelfMeta.from_meta(m.as_meta()).as_meta() == d == m.as_meta()
    assert m.merge(n_records=5).n_records == 5 and m.n_records == 0  # merge copies
    assert set(m.dataset()) == {'label_kind', 'label_names', 'valid_col', 'my_own_key', 'stats', 'build', 'parts'}
    assert ShelfMeta.from_meta(None).as_meta() == {}

def test_a_newer_format_is_refused_naming_the_file(tmp_path):
    with pytest.raises(FormatVersionError, match=r"new\.shelf.*format 9.*upgrade") as e:
        ShelfMeta.from_meta(dict(format_version=9), tmp_path/'new.shelf')
    assert isinstance(e.value, ShelfError)
    p = _old_shelf(tmp_path/'newer.shelf', dict(OLD, format_version=FORMAT_VERSION + 1), sealed=True)
    with pytest.raises(FormatVersionError, match=r"newer\.shelf was written in shelf format"): open_shelf(p)
    with pytest.raises(ShelfError, match=r"y\.shelf: damaged metadata"): ShelfMeta.from_meta([1], 'y.shelf')

def test_record_meta_is_what_a_build_writes():
    from fastai_shelve.images import BuildSettings
    m = record_meta({'image': np.zeros((3, 5, 3), np.uint8)})
    assert m['build'] == BuildSettings(size=[3, 5], gray=False, scale='legacy').as_meta() and m['image_mode'] == 'RGB'
    assert BuildSettings.from_meta(m['build']) == BuildSettings(size=(3, 5), gray=False, scale='legacy')

def test_the_read_side_does_not_import_the_writer():
    # `data` may reach `build` through others, but not for the metadata: `record_meta` comes from `images`, beside `BuildSettings`
    src = (Path(__file__).parents[1]/'fastai_shelve'/'data.py').read_text()  # from any folder
    assert 'from .build import record_meta' not in src and 'record_meta' in src.split('from .images import')[1].split('\n')[0]

def test_verify_returns_a_report(tmp_path):
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as s: s.put_many({f'k{i}': {'image': np.full((8, 8), i, np.uint8)} for i in range(4)})
    b = p.read_bytes(); i = b.index(bytes([3]) * 64); p.write_bytes(b[:i] + bytes([7]) + b[i+1:])  # one pixel of k3 flipped
    with open_shelf(p, check=False) as s: rep = s.verify()
    assert isinstance(rep, VerifyReport) and rep.n == 4 and [k for k,_ in rep] == ['k3'] and rep.bad == list(rep)
    assert rep.unbound == 0 and rep.notes == [] and 'checksum mismatch' in rep[0][1]
    assert not hasattr(s, 'notes') and not hasattr(s, 'unbound')  # nothing reported through the shelf
    out = subprocess.run([sys.executable, '-c', f"from fastai_shelve.cli import main; main(['verify', {str(p)!r}])"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and f"{p}: 3 of 4 records ok" in out.stdout and "bad record 'k3'" in out.stdout
