"""Run a script (`python pause_at_commit.py N WHEN script args...`) and stop it at the write transaction that brings its shelf
to N records or more, telling the parent on stdout, so a test kills it at a known point instead of after a guessed delay.
WHEN 'after': the transaction committed, the line is `committed <records>`; 'during': every record and the metadata written,
not committed, the line is `open <records before> <records in it>`. Then it waits, alive, until its stdin closes.
If the script ends without reaching N records, the line is `ended <records>`. Only what the shelf does is observed: its
own `txn` runs as it is, with a pause inside or after it."""
import os, sys, runpy
from contextlib import contextmanager
from fastai_shelve.lmdb_shelf import Shelf

at, when, script = int(sys.argv[1]), sys.argv[2], sys.argv[3]
assert when in ('after', 'during'), when
ctl = sys.__stdout__
state = dict(fired=False, last=0)

def _say(line):
    print(line, file=ctl, flush=True)

def _hold():
    "Stay alive, at this point of the build, until the parent kills us (or closes our stdin)."
    sys.stdin.read()
    os._exit(0)  # the parent is gone: leave as a kill would, running nothing more of the build

_txn, _put_many = Shelf.txn, Shelf.put_many

@contextmanager
def txn(self, write:bool=False, **kw):
    with _txn(self, write=write, **kw) as t:
        yield t
        if write and state.get('armed'):  # the records and the metadata are in; the commit is `_txn`'s exit
            _say(f"open {state['before']} {state['size']}"); _hold()

def put_many(self, items, *args, **kw):
    items = list(items.items() if isinstance(items, dict) else items)
    before = len(self)
    if not state['fired'] and before + len(items) >= at:
        state['fired'] = True
        if when == 'during': state.update(armed=True, before=before, size=len(items))
    _put_many(self, items, *args, **kw)
    state['last'] = len(self)
    if state['fired']: _say(f'committed {len(self)}'); _hold()

Shelf.txn, Shelf.put_many = txn, put_many
sys.argv = sys.argv[3:]
runpy.run_path(script, run_name='__main__')
_say(f"ended {state['last']}")
