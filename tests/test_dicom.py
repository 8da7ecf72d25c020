"DICOM and deep images as radiology reads them: enhanced functional groups, one frame (or every frame) at a time, honest reasons, 16-bit colour."
import subprocess, sys, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, cv2
from fastai_shelve.build import build_shelf, frame_key
from fastai_shelve.images import load_image, load_frames, read_dicom, to_uint8, BuildSettings
from fastai_shelve.store import open_shelf
from fastai_shelve.codec import ShelfError

pydicom = pytest.importorskip('pydicom')
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

def item(**kw):
    "A DICOM sequence item with attributes `kw`."
    d = Dataset()
    for k,v in kw.items(): setattr(d, k, v)
    return d

def write_dicom(fn, px, sop='1.2.840.10008.5.1.4.1.1.7', ts=ExplicitVRLittleEndian, preamble=True, pixel_data=None, **attrs):
    "Write `px` ((H,W) or (frames,H,W), 16-bit) as a real DICOM file; without preamble and file meta if not `preamble`."
    px = np.asarray(px, np.uint16)
    ds = item(SOPClassUID=sop, SOPInstanceUID=generate_uid(), Modality='OT', Rows=px.shape[-2], Columns=px.shape[-1],
              SamplesPerPixel=1, PhotometricInterpretation='MONOCHROME2', BitsAllocated=16, BitsStored=12, HighBit=11,
              PixelRepresentation=0, **attrs)
    if px.ndim == 3: ds.NumberOfFrames = px.shape[0]
    if pixel_data is not False: ds.PixelData = px.tobytes() if pixel_data is None else pixel_data
    if not preamble: pydicom.dcmwrite(fn, ds, implicit_vr=False, little_endian=True); return fn
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID, ds.file_meta.MediaStorageSOPClassUID = ts, sop
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if pixel_data is not None and pixel_data is not False: ds['PixelData'].VR = 'OB'
    ds.save_as(fn, enforce_file_format=True)
    return fn

def pydicom_file(name):
    "One of pydicom's own test files, or a skip saying it is not installed (no downloads here)."
    from pydicom.data import get_testdata_file
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try: f = get_testdata_file(name, download=False)
        except TypeError: f = get_testdata_file(name)
    if f is None: pytest.skip(f"{name} is not in the installed pydicom's test files (pydicom-data is a download)")
    return f

# An Enhanced CT head phantom: air, bone, and soft tissue from -210 to 289 HU, stored as HU + 1024
H, W = 16, 600
HU = np.concatenate([np.full((H, 50), -1000), np.full((H, 50), 1500), np.tile(np.arange(-210, 290), (H, 1))], axis=1)
WINDOWS = [(40, 400), (300, 1500), (40, 400)]  # soft tissue, bone, soft tissue

def write_enhanced_ct(fn, intercepts=(-1024, -1024, -1024), shared_rescale=True):
    "Rescale in the Shared Functional Groups (or per frame), a window per frame in the Per-frame Functional Groups."
    px = np.stack([HU - b for b in intercepts])
    rescale = lambda b: [item(RescaleSlope=1, RescaleIntercept=b, RescaleType='HU')]
    per = [item(FrameVOILUTSequence=[item(WindowCenter=c, WindowWidth=w)],
                **({} if shared_rescale else dict(PixelValueTransformationSequence=rescale(b))))
           for (c,w),b in zip(WINDOWS, intercepts)]
    shared = [item(PixelValueTransformationSequence=rescale(intercepts[0]))] if shared_rescale else [item()]
    return write_dicom(fn, px, sop='1.2.840.10008.5.1.4.1.1.2.1', SharedFunctionalGroupsSequence=shared,
                       PerFrameFunctionalGroupsSequence=per)

def viewer(hu, center, width):
    "What a viewer shows for `hu` in window (`center`, `width`): pydicom's windowing, then the shelf's uint8 range."
    from pydicom.pixels import apply_windowing
    v = item(PhotometricInterpretation='MONOCHROME2', BitsStored=12, PixelRepresentation=0, RescaleSlope=1,
             RescaleIntercept=-1024, WindowCenter=center, WindowWidth=width)
    return to_uint8(apply_windowing(hu.astype(np.float64), v))

def test_enhanced_ct_windowed_by_its_functional_groups(tmp_path):
    f = write_enhanced_ct(tmp_path/'ect.dcm')
    frames = [load_image(f, frame=i) for i in range(3)]
    for a,(c,w) in zip(frames, WINDOWS): np.testing.assert_array_equal(a, viewer(HU, c, w))
    soft = frames[0][:, 100:]
    assert len(np.unique(frames[0])) >= 200 and frames[0][:, :50].max() == 0 and frames[0][:, 50:100].min() == 255
    assert len(np.unique(to_uint8(HU + 1024)[:, 100:])) < 60  # the raw stored values' min-max: what the window fixes
    assert not np.array_equal(frames[0], frames[1])  # each frame its own window
    assert len(np.unique(soft)) >= 200

def test_per_frame_rescale(tmp_path):
    "The same HU stored with a different intercept in each frame: each frame's own rescale makes them one image."
    f = write_enhanced_ct(tmp_path/'ect.dcm', intercepts=(-1024, -2000, -1500), shared_rescale=False)
    a0, a2 = load_image(f, frame=0), load_image(f, frame=2)
    np.testing.assert_array_equal(a0, a2); np.testing.assert_array_equal(a0, viewer(HU, *WINDOWS[0]))

def _group(ds, frame, seq):
    "Functional group sequence `seq`'s item for `frame`: the per-frame one over the shared one, else None."
    for groups, i in (('PerFrameFunctionalGroupsSequence', frame), ('SharedFunctionalGroupsSequence', 0)):
        g = ds.get(groups)
        if g is not None and i < len(g) and g[i].get(seq): return g[i][seq][0]
    return None

def as_read(fn, frame=0):
    "Frame `frame` of `fn` as a viewer shows it, from the file's own pixels, rescale and window; and the fewest levels it can have."
    ds = pydicom.dcmread(fn)
    px = ds.pixel_array
    if int(ds.get('NumberOfFrames', 1)) > 1: px = px[frame]
    rescale, window = _group(ds, frame, 'PixelValueTransformationSequence') or ds, _group(ds, frame, 'FrameVOILUTSequence') or ds
    slope, intercept = float(rescale.get('RescaleSlope', 1)), float(rescale.get('RescaleIntercept', 0))
    hu = px * slope + intercept
    if 'WindowCenter' not in window: return to_uint8(hu), min(len(np.unique(hu)), 256)
    first = lambda v: float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
    c, w = first(window.WindowCenter), first(window.WindowWidth)
    from pydicom.pixels import apply_windowing
    # the file's own bit depth and rescale: pydicom's window maps onto the range they give the stored values
    v = item(PhotometricInterpretation='MONOCHROME2', BitsStored=ds.BitsStored, PixelRepresentation=ds.PixelRepresentation,
             RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=c, WindowWidth=w)
    inside = np.unique(hu[(hu > c - 0.5 - (w - 1) / 2) & (hu <= c - 0.5 + (w - 1) / 2)])  # DICOM's linear window
    # The fewest levels a linear window can give the values inside it: one each, or as many as their span covers
    least = min(len(inside), int((inside.max() - inside.min()) * 255 / max(w - 1, 1))) if len(inside) else 0
    return to_uint8(apply_windowing(hu.astype(np.float64), v)), least

def test_as_read_is_what_a_viewer_shows(tmp_path):
    "The expectation `as_read` computes from a file (the test below uses it on pydicom-data's file) on a file made here."
    f = write_enhanced_ct(tmp_path/'ect.dcm')
    for i,(c,w) in enumerate(WINDOWS):
        want, least = as_read(f, i)
        np.testing.assert_array_equal(want, viewer(HU, c, w))
        np.testing.assert_array_equal(load_image(f, frame=i), want)
        assert len(np.unique(want)) >= least
    assert [as_read(f, i)[1] for i in range(3)] == [254, 84, 254]  # 399 HU values in the soft-tissue window, 500 in bone's

def test_eCT_supplemental_if_installed():
    "pydicom-data's enhanced CT: the frame as its own pixels and window show it, with a level for each value in the window."
    f = pydicom_file('eCT_Supplemental.dcm')
    a, (want, least) = load_image(f), as_read(f)
    np.testing.assert_array_equal(a, want)
    assert len(np.unique(a)) >= least > 1  # pydicom-data 1.0.0's file: 101 levels, at least 100 (its own count, not 200)

def test_percentile_window_clips_half_a_percent_at_each_end(tmp_path):
    "scale='percentile' on a DICOM without a window: its own 0.5-99.5 percentile range over 0-255, half a percent clipped each end."
    f = write_dicom(tmp_path/'ramp.dcm', np.arange(4000).reshape(40, 100))
    got = load_image(f, scale='percentile')
    raw = pydicom.dcmread(f).pixel_array.astype(np.float64)
    lo, hi = np.percentile(raw, (0.5, 99.5))
    want = np.clip(np.rint((raw - lo) * 255 / (hi - lo)), 0, 255)
    assert np.abs(got - want).max() <= 1  # float32 in the package, float64 here: a rounding apart at most
    assert 0.005 <= (got == 0).mean() < 0.01 and 0.005 <= (got == 255).mean() < 0.01, ((got == 0).mean(), (got == 255).mean())
    assert (load_image(f) == 0).mean() < 0.005  # min-max clips nothing (8 values round to 0)

RSS = textwrap.dedent('''
    import resource, sys
    from fastai_shelve.images import load_image, load_frames
    small, big = sys.argv[1:3]
    load_image(small, frame=1); sum(1 for _ in load_frames(small))  # imports and pydicom's decoders, before measuring
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r0 = peak(); a = load_image(big, frame=150); r1 = peak()
    n = sum(int(f[0, 0] >= 0) for f in load_frames(big)); r2 = peak()
    print(r1 - r0, r2 - r0, n, a.shape)
''')

@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='ru_maxrss is in KB on Linux')
def test_one_frame_costs_one_frame(tmp_path):
    "A 100 MB file of 200 512x512 16-bit frames: one frame, and every frame in turn, in a few frames' memory."
    ramp = (np.arange(512*512, dtype=np.uint32).reshape(512, 512) % 4096).astype(np.uint16)
    write_dicom(tmp_path/'small.dcm', np.stack([ramp[:64, :64]] * 3))
    write_dicom(tmp_path/'big.dcm', np.broadcast_to(ramp, (200, 512, 512)))
    r = subprocess.run([sys.executable, '-c', RSS, str(tmp_path/'small.dcm'), str(tmp_path/'big.dcm')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    one, every, n, shape = r.stdout.split(maxsplit=3)
    frame_kb = 512 * 512 * 2 // 1024
    assert int(n) == 200 and shape.strip() == '(512, 512)'
    # decoding the whole file first would cost its 100 MB (102400 KB) and more
    assert int(one) < 12 * frame_kb and int(every) < 12 * frame_kb, (one, every, frame_kb)

def cine(tmp_path, name, n):
    "A multi-frame file of `n` distinct frames."
    return write_dicom(tmp_path/f'{name}.dcm', np.stack([np.tile(np.arange(0, 4000, 40), (20, 1)) * (i + 1) % 4096 + i
                                                         for i in range(n)]))

def test_frame_all_stores_every_frame_with_its_file(tmp_path):
    files = {'cine': 5, 'single': 1, 'ct': 3}
    for k,n in files.items(): cine(tmp_path, k, n)
    write_enhanced_ct(tmp_path/'ect.dcm')
    df = pd.DataFrame({'id': list(files) + ['ect'], 'y': ['a', 'b', 'a', 'b'], 'PatientID': ['p1', 'p1', 'p2', 'p3']})
    kw = dict(path=tmp_path, suff='.dcm', label_col='y', size=(20, 40), frame='all', progress=False)
    r = build_shelf(df.iloc[:2], tmp_path/'s.shelf', n_workers=0, **kw)  # part of the table, then the rest (resume)
    assert r.written == 6
    r = build_shelf(df, tmp_path/'s.shelf', n_workers=2, **kw)
    assert (r.written, r.existing, r.bad) == (6, 2, [])
    want = [frame_key(k, i) for k,n in {**files, 'ect': 3}.items() for i in range(n)]
    with open_shelf(tmp_path/'s.shelf') as s:
        assert s.keys() == sorted(want) and want[0] == 'cine#0000'
        for i in range(5): np.testing.assert_array_equal(s[frame_key('cine', i)]['image'], load_image(tmp_path/'cine.dcm', size=(20, 40), frame=i))
        for i in range(3): np.testing.assert_array_equal(s[frame_key('ect', i)]['image'], load_image(tmp_path/'ect.dcm', size=(20, 40), frame=i))
        assert s.meta['vocab'] == ['a', 'b'] and int(s['ct#0002']['labels']) == 0
        t = s.table
        assert sorted(t.index) == sorted(want) and t.loc['cine#0003', 'file'] == 'cine' and t.loc['ct#0001', 'PatientID'] == 'p2'
        settings = BuildSettings.from_meta(s.meta['build'])
        np.testing.assert_array_equal(np.stack(settings.frames(tmp_path/'cine.dcm')),
                                      s.get_batch([frame_key('cine', i) for i in range(5)])['image'])
    with pytest.raises(ShelfError, match="frame='all'"): settings.load(tmp_path/'cine.dcm')
    r = build_shelf(df, tmp_path/'s.shelf', n_workers=0, **kw)
    assert (r.written, r.existing) == (0, 4)  # a file whose frames are all there is skipped

def test_frame_all_splits_by_file(tmp_path):
    from fastai_shelve.data import ShelfDataLoaders
    for k in range(6): cine(tmp_path, f'f{k}', 4)
    df = pd.DataFrame({'id': [f'f{k}' for k in range(6)], 'y': list('ababab')})
    build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.dcm', label_col='y', size=16, frame='all', n_workers=0, progress=False)
    dls = ShelfDataLoaders.from_shelf(tmp_path/'s.shelf', group_col='file', valid_pct=0.3, seed=0, bs=4)
    files = lambda items: {k.rpartition('#')[0] for k in items}
    assert len(dls.train.items) + len(dls.valid.items) == 24 and len(dls.valid.items) % 4 == 0 and dls.valid.items
    assert not files(dls.train.items) & files(dls.valid.items)  # a file's frames on one side only

def test_frame_all_refused_where_it_cannot_hold(tmp_path):
    cine(tmp_path, 'c', 2)
    df = pd.DataFrame({'id': ['c']})
    with pytest.raises(ShelfError, match='masks are one per file'):
        build_shelf(df, tmp_path/'s.shelf', path=tmp_path, suff='.dcm', frame='all', mask_path=tmp_path, progress=False)
    pytest.importorskip('dask')
    from fastai_shelve.shards import build_sharded
    with pytest.raises(ShelfError, match='shards place records by key'):
        build_sharded(df, tmp_path/'sh', 2, tmp_path, suff='.dcm', frame='all')

# Reasons that say what is wrong

def reason(fn, **kw):
    with pytest.raises(ShelfError) as e: load_image(fn, **kw)
    return str(e.value)

def test_no_pixel_data(tmp_path):
    assert 'no pixel data: a RT Plan Storage without an image' in reason(pydicom_file('rtplan.dcm'))
    # JPEG 2000 named, no Pixel Data element: not a decoder problem (pydicom-data's '..._too_short.dcm')
    f = write_dicom(tmp_path/'short.dcm', np.zeros((12, 9)), ts='1.2.840.10008.1.2.4.90', pixel_data=False)
    msg = reason(f)
    assert 'no pixel data' in msg and 'it describes a 9x12 image' in msg and 'decoder' not in msg and 'pip install' not in msg

def test_truncated(tmp_path):
    assert 'truncated file: its (7FE0,0010) element needs 8192 bytes, the file ends 62 bytes short' in reason(pydicom_file('MR_truncated.dcm'))
    f = write_dicom(tmp_path/'ok.dcm', np.tile(np.arange(0, 4000, 40), (60, 1)))
    b = f.read_bytes()
    for cut in (len(b) - 3000, 600):  # in the pixels, in the header
        (tmp_path/'cut.dcm').write_bytes(b[:cut])
        assert 'truncated' in reason(tmp_path/'cut.dcm'), cut

def test_no_decoder_for_the_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate
    f = write_dicom(tmp_path/'mpeg.dcm', np.zeros((8, 8)), ts='1.2.840.10008.1.2.4.100', pixel_data=encapsulate([b'\0' * 64]))
    msg = reason(f)
    assert 'MPEG2' in msg and ('pydicom has no decoder for it' in msg or 'needs a decoder plugin' in msg), msg

def test_missing_plugin_named():
    "With the JPEG-LS plugins absent (blocked from import: what an environment without them sees), the reason names them."
    code = textwrap.dedent('''
        import sys
        for m in ('pylibjpeg', 'libjpeg', 'gdcm', 'jpeg_ls'): sys.modules[m] = None
        from fastai_shelve.images import load_image
        try: load_image(sys.argv[1])
        except Exception as e: print(e)
    ''')
    r = subprocess.run([sys.executable, '-c', code, pydicom_file('JPEGLSNearLossless_08.dcm')], capture_output=True, text=True, timeout=120)
    assert 'JPEG-LS Lossy (Near-Lossless) Image Compression needs a decoder plugin and none is installed' in r.stdout, r.stdout + r.stderr
    assert 'pylibjpeg-libjpeg' in r.stdout and "fastai_shelve[dicom]" in r.stdout

def test_preamble_less_dicom_read(tmp_path):
    px = np.tile(np.arange(0, 4000, 40), (20, 1))
    want = load_image(write_dicom(tmp_path/'with.dcm', px))
    for name in ('without.dcm', 'without.img', 'without'):  # the suffix says DICOM, or the content does
        f = write_dicom(tmp_path/name, px, preamble=False)
        assert f.read_bytes()[128:132] != b'DICM'
        np.testing.assert_array_equal(load_image(f), want)
    b = build_shelf([tmp_path/'without.img'], tmp_path/'s.shelf', n_workers=0, progress=False)
    assert b.written == 1 and not b.bad
    assert 'RT Ion Plan Storage without an image' in reason(pydicom_file('ExplVR_LitEndNoMeta.dcm'))  # not 'cannot identify image file'
    # a palette colour file without preamble or file meta (as pydicom-data's OT-PAL-8-face.dcm): colours as with them
    ds = pydicom.dcmread(pydicom_file('examples_palette.dcm'))
    ts = ds.file_meta.TransferSyntaxUID
    del ds.file_meta; ds.preamble = None
    pydicom.dcmwrite(tmp_path/'palette', ds, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    np.testing.assert_array_equal(load_image(tmp_path/'palette', gray=False), load_image(pydicom_file('examples_palette.dcm'), gray=False))

def test_reasons_reach_the_build_report(tmp_path):
    import shutil
    for n in ('rtplan.dcm', 'MR_truncated.dcm', 'CT_small.dcm'): shutil.copy(pydicom_file(n), tmp_path/n)
    r = build_shelf(sorted(tmp_path.glob('*.dcm')), tmp_path/'s.shelf', size=32, n_workers=0, progress=False)
    why = dict((k, w) for k,_,w in r.bad)
    assert r.written == 1 and 'no pixel data' in why['rtplan'] and 'truncated file' in why['MR_truncated']

# 16-bit colour

def rgb12(h=64, w=300):
    "A 12-bit RGB image: red a full ramp, green the same at half range, blue noise."
    r = np.tile(np.linspace(0, 4095, w), (h, 1))
    b = np.random.default_rng(0).integers(0, 1000, (h, w))
    return np.stack([r, r / 2, b], axis=2).astype(np.uint16)

@pytest.mark.parametrize('ext', ['.png', '.tif'])
def test_16_bit_colour_keeps_its_range(tmp_path, ext):
    a = rgb12()
    f = tmp_path/f'rgb12{ext}'
    assert cv2.imwrite(str(f), a[..., ::-1])  # OpenCV writes BGR
    col, gray = load_image(f, gray=False), load_image(f)
    assert col.dtype == gray.dtype == np.uint8 and col.shape == (64, 300, 3)
    assert len(np.unique(col)) >= 200 and len(np.unique(col[..., 0])) >= 200 and len(np.unique(gray)) >= 200
    assert col[:, -1, 0].mean() > 250 and col[:, 0, 0].mean() < 5 and col[..., 1].max() < 140  # red is red: RGB order kept
    np.testing.assert_array_equal(col, to_uint8(a))  # one scale for the three channels: their balance kept
    for gray_ in (True, False):  # predict time: the same file, or the same pixels in memory, as the build stored
        s = BuildSettings(size=32, gray=gray_)
        np.testing.assert_array_equal(s.load(f), s.prepare(a))
    p = load_image(f, scale='percentile', gray=False)
    assert p.min() == 0 and p.max() == 255
    r = build_shelf([f], tmp_path/'s.shelf', gray=False, n_workers=0, progress=False)
    with open_shelf(tmp_path/'s.shelf') as s: assert len(np.unique(s['rgb12']['image'])) >= 200

def test_16_bit_colour_with_alpha(tmp_path):
    a = rgb12()
    assert cv2.imwrite(str(tmp_path/'rgba.png'), np.dstack([a[..., ::-1], np.full(a.shape[:2], 65535, np.uint16)]))
    np.testing.assert_array_equal(load_image(tmp_path/'rgba.png', gray=False), to_uint8(a))

def test_frame_all_a_file_changed_to_fewer_frames_drops_its_old_ones(tmp_path):
    "A rerun decodes a multi-frame file changed since: its old frames go, so a file now of 2 frames serves 2, as a fresh build."
    cine(tmp_path, 'c', 5); cine(tmp_path, 'd', 2)
    df = pd.DataFrame({'id': ['c', 'd'], 'y': ['a', 'b']})
    kw = dict(path=tmp_path, suff='.dcm', label_col='y', size=16, frame='all', n_workers=0, progress=False)
    build_shelf(df, tmp_path/'s.shelf', **kw)
    cine(tmp_path, 'c', 2)  # the file rewritten: two frames now
    r = build_shelf(df, tmp_path/'s.shelf', **kw)
    assert (r.written, r.existing, r.changed) == (2, 1, 1)
    build_shelf(df, tmp_path/'fresh.shelf', **kw)
    with open_shelf(tmp_path/'s.shelf') as s, open_shelf(tmp_path/'fresh.shelf') as f:
        assert s.keys() == f.keys() == ['c#0000', 'c#0001', 'd#0000', 'd#0001']
        np.testing.assert_array_equal(s.get_batch(s.keys())['image'], f.get_batch(f.keys())['image'])
        assert s.table.equals(f.table) and s.meta.stats == f.meta.stats
