"ShelfDL under fastai's DistributedDL inside `cpu_distributed()`: two real CPU ranks (gloo), each reading a disjoint slice with its own handle."
import os, numpy as np
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
from fastai.distributed import DistributedDL
from fastai_shelve.store import open_shelf
from fastai_shelve.data import ShelfDataLoaders
from fastai_shelve.fetch import cpu_distributed

def _rank(rank, world, path, init, out):
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    try:
        dls = ShelfDataLoaders.from_shelf(path, bs=4, valid_pct=0.25, seed=0, num_workers=0, normalize=False, shuffle=True)
        fastais = DistributedDL._broadcast
        # fastai broadcasts each epoch's order from rank 0 with CUDA tensors; `cpu_distributed` makes it gloo's CPU tensors
        with cpu_distributed():
            ddl = DistributedDL(dls.train.new(after_batch=None, drop_last=False), rank, world)
            seen = [int(v) for x, _ in ddl for v in x[:, 0, 0, 0]]  # each image is filled with its record's number
        restored = DistributedDL._broadcast is fastais  # fastai's own back after the block
        opened_by = dls.train.shelf._pid
        np.save(f'{out}/rank{rank}.npy', np.array(seen))
        with open(f'{out}/rank{rank}.txt', 'w') as f: f.write(f'{len(ddl)} {opened_by} {os.getpid()} {len(dls.train.items)} {restored}')
    finally: dist.destroy_process_group()

def test_two_ranks_read_disjoint_slices(tmp_path):
    with open_shelf(tmp_path/'d.shelf', 'c') as s:
        s.put_many({f'k{i:03d}': {'image': np.full((8, 8), i, np.uint8), 'labels': np.array([i % 2, 1], np.int8)} for i in range(42)})
        s.update_meta(label_kind='multi', label_names=['odd', 'one'])
    tmp_mp.spawn(_rank, args=(2, str(tmp_path/'d.shelf'), f'file://{tmp_path}/init', str(tmp_path)), nprocs=2, join=True)
    seen = [np.load(tmp_path/f'rank{r}.npy').tolist() for r in range(2)]
    info = [(tmp_path/f'rank{r}.txt').read_text().split() for r in range(2)]
    n_train = int(info[0][3])
    assert all(i[1] == i[2] for i in info)  # each rank opened the shelf in its own process
    assert all(i[4] == 'True' for i in info)  # and fastai's own broadcast came back after `cpu_distributed`
    assert len(seen[0]) == len(seen[1]) == -(-n_train // 2)  # fastai pads to an equal share per rank
    allseen = seen[0] + seen[1]
    assert len(set(allseen)) == n_train  # together the ranks saw every training item
    assert len(allseen) - len(set(allseen)) == len(allseen) - n_train  # repeats are only fastai's padding


def test_fastai_distrib_ctx_two_cpu_ranks(tmp_path):
    "torchrun, 2 CPU ranks, fastai's distrib_ctx: each epoch the ranks split the training set between them, and the loss falls."
    import json, subprocess, sys
    from pathlib import Path
    from conftest import bars_image
    rng = np.random.default_rng(0)
    with open_shelf(tmp_path/'bars.shelf', 'c') as s:
        for i in range(90):
            lab = rng.integers(0, 2, 3); img = bars_image(lab, rng=rng); img[0, 0] = i  # the record's number, to see who read it
            s[f'k{i:03d}'] = {'image': img, 'labels': lab.astype(np.int8)}
        s.update_meta(label_kind='multi', label_names=['a', 'b', 'c'])
    torchrun = str(Path(sys.executable).with_name('torchrun'))
    # --standalone: the rendezvous on a free port of localhost, so two runs on one machine never collide
    r = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', str(Path(__file__).with_name('ddp_train.py')),
                        str(tmp_path/'bars.shelf'), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [json.loads((tmp_path/f'rank{i}.json').read_text()) for i in range(2)]
    n = ranks[0]['train']
    for a, b in zip(ranks[0]['seen'], ranks[1]['seen']):  # epoch by epoch
        assert len(a) == len(b) == -(-n // 2)
        assert len(set(a) | set(b)) == n and len(set(a) & set(b)) <= 1  # all of it, once; one repeat pads an odd count
    for rk in ranks:
        first, last = np.mean(rk['losses'][:4]), np.mean(rk['losses'][-4:])
        assert last < 0.8 * first, (first, last)
