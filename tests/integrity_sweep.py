"""Damage sweeps on real LMDB shelves: damaged copies read (`s[k]`, `get_batch`) and verified in child processes.

Run as a script to print a campaign table (`python tests/integrity_sweep.py N [kinds]`), with PYTHONPATH choosing
which fastai_shelve it measures; tests/test_integrity.py runs it with small and (slow) large counts."""
import os, sys, json, random, struct, subprocess, hashlib, tempfile
from pathlib import Path
import shutil
import numpy as np, pandas as pd

PSIZE = 4096
P_BRANCH, P_LEAF, F_BIGDATA = 0x01, 0x02, 0x01
KINDS = ('key_flip', 'pgno_flip', 'size_flip', 'page_swap', 'overflow_swap', 'random', 'truncate')
META_KINDS = ('meta_flip', 'table_flip', 'order_flip', 'meta_delete', 'table_delete', 'order_delete')
SHARD_KINDS = ('shard_copy', 'shard_foreign', 'shard_empty', 'shard_zero_bytes', 'shard_missing', 'manifest_flip')
OUTCOMES = ('clean', 'intact', 'wrong', 'non_shelf', 'signal', 'hang', 'read_unchecked')

def make_shelf(path, compression=None, n=280):
    "A shelf of `n` records: every 7th a 96x96 image (overflow pages, compressed too), the rest 8x8 (inline in leaves); {key: sha1}."
    from fastai_shelve.store import open_shelf
    rng, recs = np.random.default_rng(0), {}
    for i in range(n):
        side = 96 if i % 7 == 0 else 8
        recs[f'img{i:04d}'] = {'image': rng.integers(0, 16, (side, side), dtype=np.uint8), 'labels': np.array([i % 2, 1, 0], np.int8)}
    with open_shelf(path, 'c', compression=compression) as s:
        s.put_many(recs, meta={'mean': [0.5], 'std': [0.25]}, stats=np.ones((1, 256), np.int64))
        s.set_table(pd.DataFrame({'PatientID': [f'p{i % 9}' for i in range(n)]}, index=list(recs)))
        s.set_order(list(recs))
    return {k: [hashlib.sha1(r['image'].tobytes()).hexdigest(), r['image'].shape[0]] for k,r in recs.items()}

def _nodes(data:bytes, keys) -> list:
    "(page start, page flags, key offset, key length) of every occurrence of a record key in a page of `data`."
    res = []
    for k in keys:
        kb, at = k.encode(), 0
        while (at := data.find(kb, at)) >= 0:
            pg = at // PSIZE * PSIZE
            if at - pg >= 24 and struct.unpack_from('<H', data, at-2)[0] == len(kb):  # the node's ksize precedes its key
                res.append((pg, struct.unpack_from('<H', data, pg+10)[0], at, len(kb)))
            at += 1
    return res

def damage(data:bytes, kind:str, rnd:random.Random, keys) -> bytes:
    "A copy of shelf bytes `data` damaged one way."
    b = bytearray(data)
    nodes = _nodes(data, keys)
    if kind == 'key_flip':
        pg, fl, at, n = rnd.choice([o for o in nodes if o[1] & P_LEAF])
        b[at + rnd.randrange(n)] ^= 1 << rnd.randrange(8)
    elif kind == 'pgno_flip':
        cands = [o for o in nodes if o[1] & P_BRANCH or (o[1] & P_LEAF and struct.unpack_from('<H', data, o[2]-4)[0] & F_BIGDATA)]
        pg, fl, at, n = rnd.choice(cands)
        where = at - 8 if fl & P_BRANCH else at + n  # a branch node keeps its child in mn_lo; a big leaf node, after its key
        b[where + rnd.randrange(2)] ^= 1 << rnd.randrange(8)
    elif kind == 'size_flip':  # the stored size of a big value: LMDB maps that many bytes from its first overflow page
        pg, fl, at, n = rnd.choice([o for o in nodes if o[1] & P_LEAF and struct.unpack_from('<H', data, o[2]-4)[0] & F_BIGDATA])
        b[at - 6 + rnd.randrange(2)] ^= 1 << rnd.randrange(8)  # mn_hi: the size's high 16 bits
    elif kind == 'page_swap':
        npg = len(data) // PSIZE
        i, j = rnd.sample(range(2, npg), 2)
        b[i*PSIZE:(i+1)*PSIZE], b[j*PSIZE:(j+1)*PSIZE] = data[j*PSIZE:(j+1)*PSIZE], data[i*PSIZE:(i+1)*PSIZE]
    elif kind == 'overflow_swap':  # the first overflow pages of two big records of equal stored length
        big = {}
        for pg, fl, at, n in nodes:
            if fl & P_LEAF and struct.unpack_from('<H', data, at-4)[0] & F_BIGDATA:
                size = struct.unpack_from('<H', data, at-8)[0] | struct.unpack_from('<H', data, at-6)[0] << 16
                big.setdefault(size, []).append(struct.unpack_from('<Q', data, at+n)[0])
        pairs = [v for v in big.values() if len(v) > 1]
        i, j = rnd.sample(rnd.choice(pairs), 2)
        b[i*PSIZE:(i+1)*PSIZE], b[j*PSIZE:(j+1)*PSIZE] = data[j*PSIZE:(j+1)*PSIZE], data[i*PSIZE:(i+1)*PSIZE]
    elif kind == 'random':
        how = rnd.randrange(3)
        if how == 0:
            for _ in range(rnd.randint(1, 16)): b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif how == 1:
            at = rnd.randrange(len(b)); n = rnd.randint(1, 4096); b[at:at+n] = bytes(len(b[at:at+n]))
        else:
            at = rnd.randrange(2*PSIZE, len(b)); n = rnd.randint(1, 64); b[at:at+n] = rnd.randbytes(len(b[at:at+n]))
    elif kind == 'truncate': del b[rnd.randrange(PSIZE, len(b)):]
    else: raise ValueError(kind)
    return bytes(b)

CHILD = r'''
import sys, os, json, hashlib, io, contextlib
from pathlib import Path
orig = json.loads(Path(sys.argv[1]).read_text()); todo = json.loads(Path(sys.argv[2]).read_text())
prog, out = open(sys.argv[3], 'a'), open(sys.argv[4], 'a')
from fastai_shelve.codec import ShelfError
from fastai_shelve.store import open_shelf
from fastai_shelve import cli
from fastai_shelve.info import shelf_info
exec(os.environ['SWEEP_DIGEST'])
hashes = {h for h,_ in orig.values()}
def judge(k, img, res):
    h = hashlib.sha1(img.tobytes()).hexdigest()
    res['equal' if h == orig[k][0] else 'other_key' if h in hashes else 'differ'] += 1
def err(e, res):
    if isinstance(e, ShelfError): res['shelf_error'] += 1
    elif isinstance(e, KeyError): res['missing'] += 1
    else: res['other'].append(f'{type(e).__name__}: {e}'[:200])
for i, path, orig_meta in todo:
    res = dict(i=i, equal=0, differ=0, other_key=0, missing=0, shelf_error=0, other=[], extra=0)
    print('R', i, flush=True, file=prog)
    try:
        s = open_shelf(path, **({'check': 'full'} if os.environ.get('SWEEP_FULL') else {}))
        for k in orig:
            try: judge(k, s[k]['image'], res)
            except Exception as e: err(e, res)
        for side in {w for _,w in orig.values()}:  # batches of one shape
            ks = sorted(k for k,(_,w) in orig.items() if w == side)
            for j in range(0, len(ks), 16):
                try:
                    for k, img in zip(ks[j:j+16], s.get_batch(ks[j:j+16])['image']): judge(k, img, res)
                except Exception as e: err(e, res)
        try: res['extra'] = len(set(s.keys()) - set(orig)) + len(s.keys()) - len(set(s.keys()))
        except Exception as e: err(e, res)
        try: res['meta_differ'] = int(orig_meta is not None and meta_digest(s) != orig_meta)  # metadata read as changed, no error
        except Exception as e: err(e, res)
    except Exception as e: err(e, res)
    print('I', i, flush=True, file=prog)
    try: shelf_info(path); res['info'] = 0
    except ShelfError as e: res['info'] = 'ShelfError'
    except Exception as e: res['info'] = f'{type(e).__name__}: {e}'[:200]
    print('V', i, flush=True, file=prog)
    try:
        with contextlib.redirect_stdout(io.StringIO()): cli.verify(path)
        res['verify'] = 0
    except SystemExit as e: res['verify'] = e.code
    except ShelfError as e: res['verify'] = 'ShelfError'
    except Exception as e: res['verify'] = f'{type(e).__name__}: {e}'[:200]
    print(json.dumps(res), file=out, flush=True)
'''

META_DIGEST = """
def meta_digest(s):
    t, o = s.table, s.order
    m = [s.meta, None if t is None else t.to_json(), None if o is None else o.to_json()]
    return hashlib.sha1(json.dumps(m, sort_keys=True, default=str).encode()).hexdigest()
"""
exec(META_DIGEST)

def damage_meta(src:Path, dst:Path, kind:str, rnd:random.Random):
    "Shelf `src` copied to `dst` with one metadata entry deleted, or a bit flipped in it (in every copy LMDB left of it)."
    import lmdb
    name = kind.split('_')[0].encode()
    if kind.endswith('_delete'):
        shutil.copy(src, dst)
        env = lmdb.open(str(dst), subdir=False, max_dbs=4, lock=False)
        with env.begin(write=True) as txn: assert txn.delete(name, db=env.open_db(b'meta', txn=txn))
        return env.close()
    env = lmdb.open(str(src), subdir=False, readonly=True, max_dbs=4, lock=False)
    with env.begin() as txn: entry = bytes(txn.get(name, db=env.open_db(b'meta', txn=txn)))
    env.close()
    b, at, bit = bytearray(src.read_bytes()), rnd.randrange(len(entry)), 1 << rnd.randrange(8)
    starts, i = [], b.find(entry)
    while i >= 0: starts.append(i); i = b.find(entry, i + 1)
    assert starts, kind
    for st in starts: b[st + at] ^= bit
    dst.write_bytes(bytes(b))

def make_sharded(d:Path, compression=None, n:int=280):
    "A folder of 2 shards holding `make_shelf`'s records (another call: the same records, other shard ids)."
    from fastai_shelve.store import open_shelf
    from fastai_shelve.sharded_shelf import write_manifest, claim_shard
    write_manifest(d, 2)
    for i in range(2): claim_shard(d, i)
    rng, recs = np.random.default_rng(0), {}
    for i in range(n):
        side = 96 if i % 7 == 0 else 8
        recs[f'img{i:04d}'] = {'image': rng.integers(0, 16, (side, side), dtype=np.uint8), 'labels': np.array([i % 2, 1, 0], np.int8)}
    with open_shelf(d, 'w') as s: s.put_many(recs)

def damage_shards(src:Path, foreign:Path, dst:Path, kind:str, rnd:random.Random):
    "Sharded folder `src` copied to `dst`, its shard 1 or its manifest damaged one way."
    from fastai_shelve.store import open_shelf
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('*-lock'))
    one = dst/'shard-001.shelf'
    if kind == 'shard_copy': shutil.copy(dst/'shard-000.shelf', one)
    elif kind == 'shard_foreign': shutil.copy(foreign/'shard-001.shelf', one)  # the same keys and pixels, another folder's
    elif kind in ('shard_empty', 'shard_zero_bytes', 'shard_missing'):
        one.unlink()
        if kind == 'shard_empty': open_shelf(one, 'c').close()
        if kind == 'shard_zero_bytes': one.write_bytes(b'')
    elif kind == 'manifest_flip':
        b = bytearray((dst/'manifest.json').read_bytes()); b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        (dst/'manifest.json').write_bytes(bytes(b))
    else: raise ValueError(kind)

def classify(r) -> str:
    "One outcome for a damaged copy's reads and verify result `r`."
    if r.get('died'): return 'signal' if r['died'] == 'signal' else 'hang'
    v = r['verify']
    verify_ok = v == 0
    if r.get('meta_differ'): return 'wrong'  # metadata is checked on every read: a change read without an error is wrong
    if r.get('info', 0) not in (0, 'ShelfError'): return 'non_shelf'
    if r['other_key'] or (verify_ok and (r['differ'] or r['missing'] or r['extra'] or r['shelf_error'])): return 'wrong'
    if r['other'] or (not verify_ok and v not in (1, 2, 'ShelfError')): return 'non_shelf'
    if r['differ']: return 'read_unchecked'  # pixels changed inside one record: a read does not check the crc; verify does
    return 'intact' if verify_ok else 'clean'

def sweep(tmp, n:int, kinds=KINDS, compression=None, seed:int=0, timeout:float=60, full:bool=False) -> dict:
    "Damage `n` copies per kind of a fresh shelf in `tmp`, read with `open_shelf(check='full')` if `full`; {kind: {outcome: count}}, details."
    tmp = Path(tmp); tmp.mkdir(parents=True, exist_ok=True)
    clean = tmp/'clean.shelf'
    orig = make_shelf(clean, compression)
    data, keys, rnd = clean.read_bytes(), sorted(orig), random.Random(seed)
    (tmp/'orig.json').write_text(json.dumps(orig))
    jobs = []
    if set(kinds) & set(SHARD_KINDS): make_sharded(tmp/'clean.sharded', compression); make_sharded(tmp/'foreign.sharded', compression)
    for kind in kinds:
        for c in range(n):
            p = tmp/f'{kind}-{c}.shelf'
            if kind in META_KINDS: damage_meta(clean, p, kind, rnd)
            elif kind in SHARD_KINDS: damage_shards(tmp/'clean.sharded', tmp/'foreign.sharded', p, kind, rnd)
            else: p.write_bytes(damage(data, kind, rnd, keys))
            jobs.append((len(jobs), str(p), kind))
    from fastai_shelve.store import open_shelf
    digests = {}
    for src in [clean] + ([tmp/'clean.sharded'] if set(kinds) & set(SHARD_KINDS) else []):
        with open_shelf(src) as s: digests[src] = meta_digest(s)
    digest_of = lambda kind: digests[tmp/'clean.sharded' if kind in SHARD_KINDS else clean]
    env = {**os.environ, 'XDG_CACHE_HOME': str(tmp/'cache'), 'SWEEP_DIGEST': META_DIGEST, **({'SWEEP_FULL': '1'} if full else {})}
    prog, outf, results = tmp/'progress.txt', tmp/'results.jsonl', {}
    todo = [(i, p, digest_of(kind)) for i,p,kind in jobs]
    while todo:
        (tmp/'todo.json').write_text(json.dumps(todo)); prog.write_text('')
        try:
            r = subprocess.run([sys.executable, '-c', CHILD, str(tmp/'orig.json'), str(tmp/'todo.json'), str(prog), str(outf)],
                               env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout + 3*len(todo))
            died = 'signal' if r.returncode < 0 else None
            if r.returncode > 0 and not prog.read_text().strip(): raise RuntimeError(r.stderr[-2000:])
        except subprocess.TimeoutExpired: died = 'hang'
        for line in outf.read_text().splitlines() if outf.exists() else []:
            d = json.loads(line); results[d['i']] = d
        last = [l.split() for l in prog.read_text().splitlines()]
        if died and last:
            i = int(last[-1][1]); results.setdefault(i, dict(i=i, died=died, phase=last[-1][0]))
        elif died: raise RuntimeError(f'the sweep child died ({died}) before it began')
        todo = [t for t in todo if t[0] not in results]
    table = {k: {o: 0 for o in OUTCOMES} for k in kinds}
    for i, p, kind in jobs: results[i]['kind'], results[i]['outcome'] = kind, classify(results[i]); table[kind][results[i]['outcome']] += 1
    return dict(table=table, details=[results[i] for i,_,_ in jobs])

def show(table:dict) -> str:
    "The campaign table as markdown."
    rows = ['| damage | ' + ' | '.join(OUTCOMES) + ' |', '|---' * (len(OUTCOMES)+1) + '|']
    rows += [f'| {k} | ' + ' | '.join(str(v[o]) for o in OUTCOMES) + ' |' for k,v in table.items()]
    return '\n'.join(rows)

if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    comp = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] not in ('none', 'full') else None
    with tempfile.TemporaryDirectory() as d:
        res = sweep(d, n, compression=comp, full=len(sys.argv) > 2 and sys.argv[2] == 'full')
        print(show(res['table']))
        if len(sys.argv) > 3: Path(sys.argv[3]).write_text(json.dumps(res, indent=1, default=str))
