"The house rules, read from the source: imports flow one way, no module takes another's private names, the star import shadows nothing of fastai's."
import ast
from pathlib import Path
import numpy as np, pandas as pd, pytest

PKG = Path(__file__).resolve().parents[1]/'fastai_shelve'
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))
# The layers, bottom up: a module may import only from layers below its own (and `all`/`cli` sit on top).
LAYERS = [['codec'], ['interface'], ['meta'], ['lmdb_env'], ['lmdb_check', 'lmdb_batch'], ['lmdb_shelf', 'std_shelf'], ['sharded_shelf'], ['store'],
          ['images', 'labels', 'workers', 'rerun'],
           ['build', 'augment', 'gpu_augment', 'distributed', 'info', 'ahead'], ['shards', 'fetch', 'splits'], ['getters'], ['data'], ['demo'], ['bench'], ['cli', 'all']]
LEVEL = {m: i for i, ms in enumerate(LAYERS) for m in ms}

def imports_of(mod:str) -> list:
    "(module, names) for every import of a sibling module in `mod`, at any depth (function-level imports count too)."
    tree, res = ast.parse((PKG/f'{mod}.py').read_text()), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = node.module or ''
            if node.level == 1 and src: res.append((src.split('.')[0], [a.name for a in node.names]))
            elif node.level == 1: res += [(a.name, []) for a in node.names]  # from . import x
            elif src.startswith('fastai_shelve.'): res.append((src.split('.')[1], [a.name for a in node.names]))
            elif src == 'fastai_shelve': res += [(a.name, []) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.Import):
            res += [(a.name.split('.')[1], []) for a in node.names if a.name.startswith('fastai_shelve.')]
    return [(m, ns) for m, ns in res if m in MODULES and m != mod]

def test_every_module_has_a_layer():
    assert sorted(LEVEL) == MODULES, set(MODULES) ^ set(LEVEL)

def test_no_import_cycles():
    graph = {m: {d for d, _ in imports_of(m)} for m in MODULES}
    state = {}
    def visit(m, path):
        if state.get(m) == 'done': return
        assert state.get(m) != 'open', f"import cycle: {' -> '.join(path + [m])}"
        state[m] = 'open'
        for d in sorted(graph[m]): visit(d, path + [m])
        state[m] = 'done'
    for m in MODULES: visit(m, [])

def test_imports_flow_down_the_layers():
    up = [(m, d) for m in MODULES for d, _ in imports_of(m) if LEVEL[d] >= LEVEL[m]]
    assert not up, f"imports that do not go down a layer: {up}"

def test_no_private_names_across_modules():
    private = [(m, d, n) for m in MODULES for d, ns in imports_of(m) for n in ns if n.startswith('_') and n != '*']
    assert not private, f"private names imported from other modules: {private}"

def test_all_is_curated_and_shadows_nothing_of_fastai():
    fastai_ns, ours = {}, {}
    exec('from fastai.vision.all import *', fastai_ns)
    exec('from fastai_shelve.all import *', ours)
    import fastai_shelve.all as A
    assert 15 <= len(A.__all__) <= 30, len(A.__all__)
    assert not set(A.__all__) & set(fastai_ns), set(A.__all__) & set(fastai_ns)
    both = dict(fastai_ns); exec('from fastai_shelve.all import *', both)
    assert both['load_image'] is fastai_ns['load_image'] and both['Resize'] is fastai_ns['Resize']

def test_fixture_modules_are_real():
    "The checks above would pass on an empty package: make sure they read what they think they read."
    assert {'codec', 'store', 'build', 'data', 'cli'} <= set(MODULES)
    assert any(d == 'codec' and 'ShelfError' in ns for d, ns in imports_of('store'))
    assert {d for d, _ in imports_of('cli')} >= {'store', 'build'}

RECS = {f'k{i}': {'image': np.full((4, 5), i, np.uint8), 'labels': np.array([i % 2, 1], np.int8)} for i in range(6)}
# What each backend writes besides records; the rest of the write side it refuses with a ReadOnlyError saying why.
WRITES = {'Shelf': {'delete', 'update_meta', 'set_table'}, 'StdShelf': {'delete'}, 'ShardedShelf': {'delete'}}

def _open(cls:str, d, mode:str):
    "A shelf of backend `cls` in `d`, opened with `open_shelf` as a user would (created empty on the first call)."
    import shelve
    from fastai_shelve.store import open_shelf
    from fastai_shelve.sharded_shelf import write_manifest, claim_shard
    if cls == 'Shelf': return open_shelf(d/'s.shelf', 'c' if mode == 'w' else mode)
    if cls == 'StdShelf':
        if not (d/'s.db').exists(): shelve.open(str(d/'s.db'), 'c').close()
        return open_shelf(d/'s.db', mode, allow_pickle=True)
    if not (d/'sh').exists():
        write_manifest(d/'sh', 2)
        for i in range(2): claim_shard(d/'sh', i)  # each shard carries the id its manifest names, as build_sharded writes it
    return open_shelf(d/'sh', 'c' if mode == 'w' else mode)

def _writes(s, key:str) -> dict:
    return dict(delete=lambda: s.delete(key), update_meta=lambda: s.update_meta(note='x'),
                set_table=lambda: s.set_table(pd.DataFrame({'g': list('abcde')}, index=sorted(RECS)[1:])))

@pytest.mark.parametrize('cls', ['Shelf', 'StdShelf', 'ShardedShelf'])
def test_backends_implement_the_interface(cls, tmp_path):
    "Every backend answers the read side alike, and implements each write or refuses it with a ReadOnlyError naming the file."
    import inspect, fastai_shelve.interface as S, fastai_shelve.store as store
    from fastai_shelve.meta import ShelfMeta
    c = getattr(store, cls)  # the backends `open_shelf` opens
    assert issubclass(c, S.ShelfBase) and not inspect.isabstract(c), getattr(c, '__abstractmethods__', None)
    s = _open(cls, tmp_path, 'w')
    assert type(s) is c
    s.put_many(RECS)
    ks = sorted(RECS)
    assert s.keys() == ks and list(s) == ks and len(s) == 6
    assert 'k3' in s and 'nope' not in s and s.missing(['k1', 'nope']) == ['nope']
    assert [int(r['image'][0, 0]) for r in s.get_many(['k4', 'k1'])] == [4, 1] and int(s['k5']['labels'][0]) == 1
    assert s.get_many(['k1', 'nope'], default=None)[1] is None
    with pytest.raises(KeyError, match='nope'): s.get_many(['nope'])
    b = s.get_batch(['k2', 'k5', 'k0'])
    np.testing.assert_array_equal(b['image'], np.stack([RECS[k]['image'] for k in ('k2', 'k5', 'k0')]))
    assert isinstance(s.meta, ShelfMeta) and dict(s.meta)['format'] and s.verify() == []
    done = set()
    for name, f in _writes(s, 'k0').items():
        try: f(); done.add(name)
        except S.ReadOnlyError as e: assert str(s.path) in str(e), e
    assert done == WRITES[cls], done
    assert 'k0' not in s and len(s) == 5  # every backend deletes
    if 'update_meta' in done: assert s.meta['note'] == 'x'
    if 'set_table' in done: assert s.table.g.to_dict() == dict(zip(ks[1:], 'abcde'))
    s.close()
    with pytest.raises(S.ShelfClosedError): s.get_many(['k1'])
    with _open(cls, tmp_path, 'r') as ro:  # read-only: every write refused, nothing changed
        assert len(ro) == 5
        for name, f in [('put_many', lambda: ro.put_many({'new': RECS['k1']})), *_writes(ro, 'k1').items()]:
            with pytest.raises(S.ReadOnlyError) as e: f()
            assert str(ro.path) in str(e.value), (name, e.value)
        assert len(ro) == 5 and 'new' not in ro and 'k1' in ro

def test_no_patch_on_our_own_classes():
    "Methods of our classes live in their class bodies: fastcore's @patch is for classes we don't own."
    offenders = [m for m in MODULES if '@patch' in (PKG/f'{m}.py').read_text()]
    assert not offenders, offenders

def test_modules_hold_one_idea():
    "No module but the benchmark over ~400 lines."
    sizes = {m: len((PKG/f'{m}.py').read_text().splitlines()) for m in MODULES}
    big = {m: n for m, n in sizes.items() if n > 400 and m != 'bench'}
    assert not big, big

def test_data_imports_without_albumentations(other_process):
    "`data` needs no augmentation library: importing it must not load albumentations (and its online version check)."
    assert 'fastai_shelve.data' in other_process.modules and 'fastai' in other_process.modules
    assert not [m for m in other_process.modules if m.split('.')[0] == 'albumentations']

def test_imports_are_used():
    "A sibling's name is imported to be used, not to be found here (0.2.0 retired the re-exports for old import paths)."
    unused = []
    for m in MODULES:
        if m == 'all': continue  # gathers what users call
        tree = ast.parse((PKG/f'{m}.py').read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        unused += [(m, d, n) for d, ns in imports_of(m) for n in ns if n != '*' and n not in used]
    assert not unused, unused

def _defined(mod:str) -> set:
    "The names `mod` defines at its top level (functions, classes, assignments), not those it imports."
    names = set()
    for node in ast.parse((PKG/f'{mod}.py').read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names

def test_each_name_has_one_home():
    "Since 0.2.0 no module re-exports another's names for old import paths: its `__all__` is what it defines (`all` gathers)."
    import importlib
    assert 'load_image' not in _defined('build') and 'build_shelf' in _defined('build')  # the check reads what it thinks it reads
    for mod in MODULES:
        if mod == 'all': continue
        assert '_all_' not in _defined(mod), f"{mod} re-exports names through nbdev's _all_"
        foreign = set(importlib.import_module(f'fastai_shelve.{mod}').__all__) - _defined(mod)
        assert not foreign, (mod, foreign)

def test_learners_exported_before_the_getters_module_still_load():
    "0.2.6 and before pickled the getters' classes as `fastai_shelve.data`'s (an exported Learner): those names resolve still."
    import pickle
    from fastai_shelve import data, getters
    assert all(getattr(data, n) is getattr(getters, n) for n in getters.__all__)
    old = pickle.dumps(getters.ArrayToImage(), protocol=0).replace(b'fastai_shelve.getters', b'fastai_shelve.data')
    assert b'fastai_shelve.data\nArrayToImage' in old and type(pickle.loads(old)) is getters.ArrayToImage
    with pytest.raises(AttributeError, match='NoSuchName'): data.NoSuchName
