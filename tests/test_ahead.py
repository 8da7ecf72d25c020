"""Batches one step ahead on the GPU (`AheadDL`): without CUDA nothing changes; with CUDA the same batches, in the same order,
repeatable under `set_seed`, from pinned buffers. The CUDA tests skip where there is none."""
import random
import numpy as np, pytest, torch
from fastai.vision.all import aug_transforms, set_seed, Resize, RandomResizedCrop, Learner, BCEWithLogitsLossFlat
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.fetch import ShelfDL
from fastai_shelve.ahead import one_ahead

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

def epoch(dls, ahead, seed=0, **kw):
    "One shuffled training epoch under `set_seed(seed)`, on the CPU for comparing."
    set_seed(seed)
    dl = dls.train.new(ahead=ahead, **kw)
    assert dl.ahead == ahead
    return [tuple(t.cpu().clone() for t in b) for b in dl]

def same(a, b):
    return len(a) == len(b) > 0 and all(torch.equal(u, v) and type(u) == type(v) for x, y in zip(a, b) for u, v in zip(x, y))

@pytest.mark.parametrize('item_tfms', [None, Resize(48)], ids=['whole', 'items'])
def test_ahead_changes_nothing_without_cuda(bars_shelf, item_tfms):
    "On the CPU (or with no CUDA device) the hook is not taken: the batches with it on are those with it off, augmented alike."
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0, item_tfms=item_tfms, batch_tfms=aug_transforms(), device='cpu')
    assert isinstance(dls.train, ShelfDL) and dls.train.ahead  # on by default
    assert dls.train.ahead_device() is None
    on, off = epoch(dls, True), epoch(dls, False)
    assert same(on, off)
    assert not same(on, epoch(dls, True, seed=1))  # the augmentation is random: the comparison could fail

def test_made_ahead_only_where_nothing_is_drawn(bars_shelf):
    "Batches are made a step ahead only where making them draws nothing here: read whole, or made by workers; random items are not."
    path, _ = bars_shelf
    kw = dict(bs=8, seed=0, device='cpu')
    assert ShelfDataLoaders.from_shelf(path, num_workers=0, **kw).train.makes_ahead()  # whole batches: deterministic reads
    assert ShelfDataLoaders.from_shelf(path, num_workers=2, item_tfms=Resize(48), **kw).train.makes_ahead()  # workers' items
    # items made here, by fastai's random item transforms: made at the hand-over, in fastai's order
    assert not ShelfDataLoaders.from_shelf(path, num_workers=0, item_tfms=RandomResizedCrop(40), **kw).train.makes_ahead()

def test_batch_tensors_walks_what_to_device_walks():
    "Every tensor `to_device` moves (in tuples, lists, fastcore `L`s, dicts) is found, to be recorded on the training stream."
    from fastai_shelve.ahead import batch_tensors
    from fastcore.foundation import L
    from collections import UserDict
    a, b, c, d, e = torch.zeros(1), torch.ones(2), torch.full((3,), 2.), torch.zeros(4), torch.ones(5)
    assert [t.numel() for t in batch_tensors(({'x': a, 'more': [b]}, c, L([d]), 'a name', UserDict(y=e)))] == [1, 2, 3, 4, 5]

def test_one_ahead_stops_early_and_empty():
    "A loop that breaks leaves one batch started and never finished; no batches, no calls."
    started, finished = [], []
    it = one_ahead(iter(range(10)), lambda b: started.append(b) or b, lambda b: finished.append(b) or b)
    assert next(it) == 0 and started == [0, 1] and finished == [0]
    it.close()
    assert list(one_ahead([], started.append, finished.append)) == [] and started == [0, 1]

@cuda
@pytest.mark.parametrize('workers,item_tfms', [(0, None), (2, Resize(48))], ids=['whole', 'items-workers'])
def test_ahead_on_cuda_same_batches(bars_shelf, workers, item_tfms):
    "On a GPU, with fastai's GPU augmentation: the same batches with the hook on as off, and `set_seed` repeats them."
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=workers, item_tfms=item_tfms, batch_tfms=aug_transforms(),
                                      device='cuda')
    assert dls.train.ahead_device().type == 'cuda'
    on, off = epoch(dls, True), epoch(dls, False)
    assert same(on, off) and same(on, epoch(dls, True))
    assert not same(on, epoch(dls, True, seed=1))

@cuda
@pytest.mark.parametrize('workers,item_tfms', [(0, None), (2, Resize(48)), (0, RandomResizedCrop(40))], ids=['whole', 'workers', 'random-items'])
def test_ahead_with_a_step_that_draws(bars_shelf, workers, item_tfms):
    "A training step drawing between batches (dropout on the GPU, MixUp's draws on the CPU, Python's): the same batches ahead or not."
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=workers, item_tfms=item_tfms, batch_tfms=aug_transforms(),
                                      device='cuda')
    def steps(ahead):
        set_seed(0)
        got = []
        for x, y in dls.train.new(ahead=ahead):
            got.append(x.cpu().clone())
            torch.nn.functional.dropout(torch.ones(64, device='cuda'), 0.5); torch.rand(3); random.random()
        return got
    on, off = steps(True), steps(False)
    assert len(on) == len(off) > 1 and all(torch.equal(a, b) for a, b in zip(on, off))

@cuda
def test_ahead_keeps_one_side_stream(bars_shelf):
    "One side stream for the loader's life (the caching allocator keeps memory per stream), left out when the loader is pickled."
    path, _ = bars_shelf
    dl = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0, batch_tfms=aug_transforms(), device='cuda').train
    for _ in dl: pass
    reserved, side = torch.cuda.memory_reserved(), dl.side_stream(dl.ahead_device())
    for _ in range(4):
        for _ in dl: pass
    assert dl.side_stream(dl.ahead_device()) is side and len(dl._streams) == 1
    assert torch.cuda.memory_reserved() <= reserved * 1.25
    assert '_streams' not in dl.__getstate__()

@cuda
def test_ahead_reads_into_pinned_buffers_and_trains(bars_shelf):
    path, _ = bars_shelf
    dls = ShelfDataLoaders.from_shelf(path, bs=8, seed=0, num_workers=0, device='cuda')
    dl = dls.train
    x, y = dl.one_batch()  # one batch: made when asked, nothing read into pinned buffers ahead
    assert x.is_cuda and set(dl._pools) == {False}
    for x, y in dl: break  # stopped after one batch: the batch started ahead is waited for
    pinned = dl._pools[True]
    assert x.is_cuda and pinned.pin and pinned.entries
    assert all(torch.frombuffer(e['bufs']['image'], dtype=torch.uint8).is_pinned() for e in pinned.entries)
    dl.one_batch()  # `show_batch` between epochs: the pinned buffers are kept for the next epoch, not made again
    assert dl._pools[True] is pinned and dl.batch_pool() is pinned
    n = sum(len(b[0]) for b in dl)
    assert n == len(dl.items) // 8 * 8
    from torch import nn
    learn = Learner(dls, nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                    loss_func=BCEWithLogitsLossFlat())
    learn.fit(1, 1e-2)
    assert np.isfinite(learn.recorder.values[-1][0])

@cuda
def test_every_copy_ahead_is_from_pinned_memory():
    "What `CudaAhead` copies is page-locked (labels made by `.float()` are pinned first): no copy holds the training thread."
    from fastai.torch_core import TensorImage, TensorMultiCategory
    from fastai_shelve.ahead import CudaAhead, batch_tensors
    d = torch.device('cuda')
    cuda = CudaAhead(d, torch.cuda.Stream(d))
    x = TensorImage(torch.zeros(2, 1, 8, 8, dtype=torch.uint8).pin_memory())
    y = TensorMultiCategory(torch.ones(2, 3, dtype=torch.int8).float())  # unpinned, as `ShelfMultiCategorize` makes it
    host, out, ev = job = cuda.start((x, y))
    assert all(t.is_pinned() for t in batch_tensors(host)) and host[0] is x  # pinned already: kept, not copied again
    xb, yb = cuda.finish(job)
    assert type(xb) is TensorImage and type(yb) is TensorMultiCategory and xb.is_cuda and torch.equal(yb.cpu(), y)
