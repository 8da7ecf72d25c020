"""`fastai-shelve bench --quick` runs every section and writes a well-formed report (its speed is the benchmark's business,
not the tests'): the command as users run it, with `QUICK`'s sizes shrunk to `TINY`'s, the smallest that run every path."""
import json

# The CLI's own `main`, in a process whose `--quick` sizes are TINY's: the session's other process (conftest.py), which has
# imported fastai already (~8 s of CPU a process)
CLI_TINY = 'import sys, fastai_shelve.bench as b; b.QUICK.update(b.TINY); from fastai_shelve.cli import main; main(sys.argv[1:])'

def test_bench_quick_output_is_well_formed(tmp_path, other_process):
    (tmp_path/'bench_tiny.py').write_text(CLI_TINY)
    out = tmp_path/'out'
    r = other_process.run(tmp_path/'bench_tiny.py', 'bench', '--quick', '--out', out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out/'bench.json').read_text())
    assert {'cores', 'ram_gib', 'python', 'torch', 'fastai', 'lmdb', 'dbm_backend', 'mode'} <= set(res['facts'])
    assert res['facts']['mode'] == 'quick' and res['facts']['sizes']['n'] == 48  # TINY's
    sections = {r['section'] for r in res['rows']}
    assert sections == {'1 fetch', '2 scale', '3 loaders', '4 build', '5 size', '6 augment', '7 compress'}
    comp = {r['name']: r for r in res['rows'] if r['section'] == '7 compress'}
    from fastai_shelve.codec import COMPRESSIONS
    for c in ('raw', *COMPRESSIONS, 'PNG files', 'JPEG q95 files'):  # every choice beside the files users store instead
        assert comp[f'{c} get_batch']['img_s'] > 0 and comp[f'{c} epoch']['s'] > 0 and comp[f'{c} get_batch']['bytes_per_image'] > 0
    assert comp['raw get_batch']['size_ratio'] == 1 and comp['zstd-delta get_batch']['size_ratio'] < comp['zstd get_batch']['size_ratio'] < 1
    assert comp['PNG files get_batch']['size_vs_png'] == 1 and comp['PNG files get_batch']['speed_vs_png'] == 1
    assert comp['ShelfDataLoaders uint8 train loader over get_batch']['loader_over_fetch'] > 0
    fetch = {r['name']: r for r in res['rows'] if r['section'] == '1 fetch' and r['cache'] == 'warm'}
    assert fetch['memmap fancy index (ceiling)']['ratio_to_memmap'] == 1
    assert all(r['s_per_batch'] > 0 and r['img_s'] > 0 for r in fetch.values())
    loaders = [r for r in res['rows'] if r['section'] == '3 loaders' and not r['name'].startswith('FFCV')]
    assert {(r['aug'], r['workers']) for r in loaders} == {(a, w) for a in (False, True) for w in (0, 2)}
    assert all(r['images'] > 0 and r['img_s'] > 0 for r in loaders)
    assert len(res['targets']) >= 13 + (res['facts']['ffcv'] == 'measured') and all(isinstance(t['met'], bool) and t['measured'] for t in res['targets'])
    targets = ' '.join(t['target'] for t in res['targets'])
    assert 'a choice within 1.2x PNG files bytes' in targets and 'a choice within 0.5x raw bytes' in targets  # MET/MISS per target
    assert ('FFCV' in targets) == (res['facts']['ffcv'] == 'measured')
    table = (out/'bench.txt').read_text()
    assert '== targets' in table and table.count('MET') + table.count('MISS') == len(res['targets'])
    assert (out/'bench.png').read_bytes()[:4] == b'\x89PNG'

def test_gpu_section_rows_and_targets(tmp_path):
    "Section 8's code paths, on the CPU at a tiny size (its figures are the GPU's business): every pipeline a row, the targets read them."
    import torch
    from fastai_shelve.bench import bench_gpu, check_targets, QUICK
    assert torch.cuda.is_available() or bench_gpu(tmp_path/'none', 8, 32, 4) == []  # no CUDA: skipped, said by run_bench
    if not torch.cuda.is_available():  # `fastai-shelve bench --sections gpu` here: says it skipped, writes its files, no error
        from fastai_shelve.bench import run_bench
        res = run_bench(tmp_path/'skip', quick=True, sections=['gpu'])
        assert res['rows'] == [] and res['facts']['gpu'] == 'skipped: no CUDA device' and (tmp_path/'skip'/'bench.png').exists()
    rows = bench_gpu(tmp_path, 24, 32, 4, archs=('resnet18',), workers=0, skip=1, device='cpu')
    named = {r['name'] for r in rows}
    assert 'resident batch (ceiling)' in named and 'shelf, xray_gpu_augs (GPU recipe)' in named and len(rows) == 7
    assert all(r['img_s'] > 0 for r in rows if 'img_s' in r)
    targets = [t for t in check_targets(rows, QUICK) if 'ceiling' in t[0] or 'GPU recipe' in t[0]]
    assert len(targets) == 3
