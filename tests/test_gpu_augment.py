"""The X-ray recipe as batch transforms (`xray_gpu_augs`): on the CPU here, on a GPU where there is one; repeatable under
`set_seed`, per-sample random with the recipe's probabilities, the batch's fastai types kept, validation untouched."""
import math, pytest, torch
from fastai.vision.all import set_seed, Normalize, IntToFloatTensor
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.getters import TensorImageGray
pytest.importorskip('kornia')
from fastai_shelve.gpu_augment import xray_gpu_augs, FlipH, RotateBorders, CoarseDropout, downscale

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

def epoch(path, seed, device='cpu'):
    set_seed(seed)
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0, batch_tfms=xray_gpu_augs(48), device=device)
    return dls, [tuple(t.cpu() for t in b) for b in dls.train], [tuple(t.cpu() for t in b) for b in dls.valid]

def test_recipe_in_shelf_dataloaders_repeats_under_set_seed(bars_shelf):
    path, _ = bars_shelf
    dls, a, va = epoch(path, 0)
    _, b, vb = epoch(path, 0)
    _, c, _ = epoch(path, 1)
    fs = dls.train.after_batch.fs
    assert [type(f) for f in fs][0] is IntToFloatTensor and type(fs[-1]) is Normalize  # on floats in [0, 1], before Normalize
    x, y = a[0]
    assert isinstance(x, TensorImageGray) and x.shape == (8, 1, 48, 48) and x.dtype == torch.float32 and y.shape == (8, 3)
    assert all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    assert va[0][0].shape[-2:] == (64, 64)  # validation untouched (the shelf's 64x64): no crop, no randomness
    assert all(torch.equal(p[0], q[0]) for p, q in zip(va, vb))

def test_steps_draw_per_sample_with_their_probabilities():
    set_seed(0)
    x = TensorImageGray(torch.rand(400, 1, 16, 16))
    for t in xray_gpu_augs(16):
        if t.p >= 1: continue
        changed = ((t(x, split_idx=0) - x).abs().flatten(1).amax(1) > 1e-6).float().mean().item()
        assert abs(changed - t.p) < 4 * math.sqrt(t.p * (1 - t.p) / 400), (type(t).__name__, changed, t.p)
    flipped = FlipH(1.)(x, split_idx=0)
    assert torch.equal(flipped, x.flip(-1)) and torch.equal(FlipH(1.)(x, split_idx=1), x)

def test_rotation_borders_and_dropout_holes():
    set_seed(0)
    white = TensorImageGray(torch.ones(300, 1, 32, 32))
    r = RotateBorders(10, 1.)(white, split_idx=0)
    corner_dark = (r[:, 0, 0, 0] < 0.9).float().mean().item()  # zeros padding darkens a corner; reflection and border don't
    assert 0.2 < corner_dark < 0.5, corner_dark
    holes = CoarseDropout((2, 8), (0.1, 0.15), 1.)(white, split_idx=0)
    zero = (holes == 0).flatten(1).float().mean(1)
    assert (zero > 0).all() and zero.max() < 8 * 0.15 ** 2 + 0.02

def test_downscale_is_nearest_both_ways():
    x = torch.arange(16.).view(1, 1, 4, 4)
    assert torch.equal(downscale(x, torch.tensor([1.])), x)
    half = downscale(x, torch.tensor([0.5]))
    assert torch.equal(half[0, 0, ::2, ::2], x[0, 0, ::2, ::2]) and torch.equal(half[0, 0, 1::2], half[0, 0, ::2])

@cuda
def test_recipe_on_cuda(bars_shelf):
    path, _ = bars_shelf
    dls, a, _ = epoch(path, 0, device='cuda')
    _, b, _ = epoch(path, 0, device='cuda')
    assert dls.train.one_batch()[0].is_cuda and a[0][0].shape == (8, 1, 48, 48)
    assert all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))

def test_steps_that_move_pixels_refuse_masks(tmp_path):
    "A segmentation shelf's masks are not moved by the recipe's flips, rotations, crops and warps: refused at once, not misaligned."
    import numpy as np, pandas as pd
    from PIL import Image
    from fastai_shelve.build import build_shelf
    from fastai_shelve.codec import ShelfError
    from fastai_shelve.gpu_augment import BrightContrast
    rng = np.random.default_rng(0)
    for d in ('img', 'msk'): (tmp_path/d).mkdir()
    for i in range(8):
        m = np.zeros((24, 24), np.uint8); m[4 + i:12 + i, 3:9] = 1
        Image.fromarray((m * 150 + rng.integers(0, 30, m.shape)).astype(np.uint8)).save(tmp_path/'img'/f'k{i}.png')
        Image.fromarray(m).save(tmp_path/'msk'/f'k{i}.png')
    build_shelf(pd.DataFrame({'id': [f'k{i}' for i in range(8)]}), tmp_path/'seg.shelf', path=tmp_path/'img', suff='.png',
                mask_path=tmp_path/'msk', codes=['background', 'tube'], n_workers=0, progress=False)
    with pytest.raises(ShelfError, match="FlipH moves an image's pixels but not its TensorMask"):  # when fastai first runs them
        ShelfDataLoaders.from_shelf(tmp_path/'seg.shelf', y='mask', bs=4, seed=0, valid_pct=0.25, batch_tfms=xray_gpu_augs(20))
    # an image target (image to image) would be drawn for on its own: refused, nested or not
    from fastai.vision.all import TensorImage
    x = TensorImage(torch.rand(2, 1, 24, 24))
    for b in ((x, TensorImage(x.clone())), ((x, TensorImage(x.clone())), torch.zeros(2))):
        with pytest.raises(ShelfError, match="BrightContrast would change each of the batch's images with draws of its own"):
            BrightContrast(p=1.)(b, split_idx=0)
    assert torch.equal(BrightContrast(p=1.)((x, TensorImage(x.clone())), split_idx=1)[1], x)  # validation: not applied, not refused
    # steps that only change pixel values leave masks where they belong: allowed
    x, m = ShelfDataLoaders.from_shelf(tmp_path/'seg.shelf', y='mask', bs=4, seed=0, valid_pct=0.25,
                                       batch_tfms=[BrightContrast(p=1.)]).train.one_batch()
    assert x.shape == (4, 1, 24, 24) and m.shape == (4, 24, 24) and set(m.unique().tolist()) <= {0, 1}
