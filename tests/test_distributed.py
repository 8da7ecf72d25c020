"ShelfDL under fastai's DistributedDL inside `cpu_distributed()`: two real CPU ranks (gloo), each reading a disjoint slice with its own handle."
import numpy as np
from fastai_shelve.store import open_shelf

def test_fastai_distrib_ctx_two_cpu_ranks(tmp_path):
    "torchrun, 2 CPU ranks, fastai's distrib_ctx in `cpu_distributed()`: each epoch the ranks split the training set, the loss falls."
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
        assert rk['own_handle'] and rk['restored']  # its own shelf handle; fastai's broadcast back after `cpu_distributed`
        first, last = np.mean(rk['losses'][:4]), np.mean(rk['losses'][-4:])
        assert last < 0.8 * first, (first, last)
