"A JPEG whose image data is garbled is a bad record of the build (PIL decodes it to garbage without a word); predict still reads it."
import numpy as np, pandas as pd, pytest
from PIL import Image
from skimage import data
from fastai_shelve.build import build_shelf
from fastai_shelve.images import BuildSettings, _jpeg_scan_damage
from fastai_shelve.store import open_shelf

def damaged(clean:bytes, code:int) -> bytes:
    "`clean` with two bytes of its image data replaced by marker 0xFF`code`, as a garbled transfer or a bad sector leaves it."
    mid = len(clean) // 2
    return clean[:mid] + bytes([0xFF, code]) + clean[mid+2:]

@pytest.fixture
def files(tmp_path):
    Image.fromarray(data.chelsea()).save(tmp_path/'ok.jpg', quality=90)
    Image.fromarray(data.chelsea()).save(tmp_path/'rst.jpg', quality=90, restart_marker_blocks=4)  # restarts: valid
    Image.fromarray(data.astronaut()[::2, ::2]).save(tmp_path/'prog.jpg', quality=90, progressive=True)  # several scans: valid
    clean = (tmp_path/'ok.jpg').read_bytes()
    for name, code in (('rst_out_of_place', 0xD3), ('tem', 0x01), ('app_in_data', 0xE1)):
        (tmp_path/f'{name}.jpg').write_bytes(damaged(clean, code))
        with Image.open(tmp_path/f'{name}.jpg') as im: im.load()  # PIL takes each without a word: the reason for the check
    (tmp_path/'cut.jpg').write_bytes(clean[:len(clean) * 2 // 3])  # truncated: PIL's own "image file is truncated"
    return tmp_path

def test_garbled_jpegs_are_bad_records(files):
    df = pd.DataFrame({'id': ['ok', 'rst', 'prog', 'rst_out_of_place', 'tem', 'app_in_data', 'cut']})
    r = build_shelf(df, files/'s.shelf', files, suff='.jpg', n_workers=0, progress=False)
    why = {k: reason for k,_,reason in r.bad}
    assert r.written == 3 and set(why) == {'rst_out_of_place', 'tem', 'app_in_data', 'cut'}, why
    assert 'damaged JPEG' in why['tem'] and '0xFF01' in why['tem'] and 'restart marker 0xFFD3' in why['rst_out_of_place']
    assert 'truncated' in why['cut']
    with open_shelf(files/'s.shelf') as s: assert sorted(s.keys()) == ['ok', 'prog', 'rst']
    # At predict time a test image is read whatever it holds, as fastai reads it: no refusal there
    assert BuildSettings(size=32).load(files/'tem.jpg').shape == (32, 32)

def test_valid_jpegs_are_not_flagged(files):
    for name in ('ok', 'rst', 'prog'): assert _jpeg_scan_damage((files/f'{name}.jpg').read_bytes()) is None

def test_a_new_file_that_does_not_decode_is_an_error_naming_it(files):
    "At predict time a truncated JPEG or a text file fails as fastai's would (an `OSError`), naming the file, which PIL's doesn't."
    from fastai_shelve.data import ShelfDataLoaders
    from fastai_shelve.images import ImageDecodeError
    df = pd.DataFrame({'id': ['ok', 'rst', 'prog']})
    build_shelf(df, files/'s.shelf', files, suff='.jpg', size=32, n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(files/'s.shelf', bs=2, valid_pct=0, device='cpu')
    (files/'notes.jpg').write_text('not an image')
    for name, why in (('cut.jpg', 'truncated'), ('notes.jpg', 'cannot identify image file')):
        with pytest.raises(ImageDecodeError, match=f"{name}: cannot decode it: .*{why}") as e: dls.test_dl([files/name]).one_batch()
        assert isinstance(e.value, OSError)
    assert dls.test_dl([files/'ok.jpg']).one_batch()[0].shape == (1, 1, 32, 32)  # a good file still reads
