"The benchmark's chart, drawn from the committed full run: every title and label inside the figure."
import json
from pathlib import Path
import numpy as np
from PIL import Image
from fastai_shelve.bench import _chart

def test_chart_fits_its_figure(tmp_path):
    "Nothing runs off the figure: its outermost pixels are all background (a cut title leaves text on the edge)."
    run = sorted((Path(__file__).parents[1]/'nbs'/'images').glob('bench_full_*.json'))[-1]
    d = json.loads(run.read_text())
    _chart(d['rows'], [(t['target'], t['measured'], t['met'], t['margin']) for t in d['targets']], tmp_path/'bench.png')
    a = np.asarray(Image.open(tmp_path/'bench.png').convert('L'))
    edges = {'left': a[:, :3], 'right': a[:, -3:], 'top': a[:3], 'bottom': a[-3:]}
    assert {k: int(v.min()) for k,v in edges.items()} == dict.fromkeys(edges, 255)
