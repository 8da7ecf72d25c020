"""A record is bound to its key: a second check, beside tests/test_integrity.py's read under another key. Here the codec alone
(encode with a key, rebind, decode with the right and a wrong key), and damage the 4-byte key check cannot see: a record whose
tail names the key it sits under, while its crc still covers the key it was written for, is found by `verify`."""
import struct
import numpy as np, pytest
from fastai_shelve.codec import encode_record, decode_record, bind_key, key_crc, check_crc, RecordError
from fastai_shelve.store import open_shelf

REC = {'image': np.arange(64, dtype=np.uint8).reshape(8, 8), 'labels': np.array([1, 0], np.int8)}

@pytest.mark.parametrize('compression', [None, 'zstd'])
def test_codec_binds_a_record_to_its_key(compression):
    pytest.importorskip('zstandard') if compression else None
    b = encode_record(REC, compression, key='study-1')
    np.testing.assert_array_equal(decode_record(b, check=True, key='study-1')['image'], REC['image'])
    for wrong in ('study-2', 'study-10', 'study-', None, b'study-1\x00'):
        with pytest.raises(RecordError, match='another key'): decode_record(b, check=True, key=wrong)
    moved = bind_key(b, 'study-2')  # what a write under another key stores
    check_crc(moved, key='study-2')
    with pytest.raises(RecordError, match='another key'): check_crc(moved, key='study-1')
    assert decode_record(moved, key='study-2')['labels'].tolist() == [1, 0]

def test_a_tail_forged_for_its_key_is_still_found_by_verify(tmp_path):
    "k1's bytes under k2 with only the tail's key check rewritten: a plain read passes that check, the crc (over the key) does not."
    p = tmp_path/'s.shelf'
    with open_shelf(p, 'c') as s: s.put_many({f'k{i}': {'image': np.full((8, 8), i, np.uint8)} for i in range(3)})
    with open_shelf(p, 'w') as s:
        with s.txn() as txn: b = bytearray(txn.get(b'k1'))
        struct.pack_into('<I', b, len(b) - 4, key_crc('k2'))  # the tail now names k2; the crc still xors in k1's
        s._commit([(b'k2', bytes(b))])
    with open_shelf(p) as s:
        assert [k for k,_ in s.verify()] == ['k2']
        assert s['k0']['image'][0, 0] == 0 and s['k1']['image'][0, 0] == 1
