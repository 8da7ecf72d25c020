"The docs site: mkdocs builds it from the notebooks (docs/hooks.py runs each one), and headless Chromium shows it."
import os, shutil, subprocess, sys, json, threading, functools
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name('mkdocs')
SHOTS = ROOT/'build'/'screenshots'  # kept after the run, to look at (build/ is git-ignored)
# Debian's chromium; without the networking flags it keeps trying to reach Google, which this machine refuses
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']

def mkdocs_build(config:Path, site:Path, env:dict=None):
    return subprocess.run([str(MKDOCS), 'build', '-f', str(config), '-d', str(site)], cwd=config.parent,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})

@pytest.fixture(scope='module')
def site(tmp_path_factory, nbs_ran):
    site = tmp_path_factory.mktemp('docs')/'site'
    # The build runs every notebook as nbdev_test does and notes those that passed: tests/test_notebooks.py won't rerun them
    r = mkdocs_build(ROOT/'mkdocs.yml', site, env={'FASTAI_SHELVE_NBS_RAN': str(nbs_ran)})
    assert r.returncode == 0, f'docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}'
    return site

@pytest.fixture(scope='module')
def browser(site):
    chromium = shutil.which('chromium')
    if chromium is None: pytest.fail("Debian's chromium is needed: apt-get install chromium (the README's test command does)")
    from playwright.sync_api import sync_playwright
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b, f'http://127.0.0.1:{httpd.server_address[1]}'
        b.close()
    httpd.shutdown()

class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def open_page(browser, path:str):
    b, url = browser
    page = b.new_page(viewport={'width': 1280, 'height': 1000})
    resp = page.goto(f'{url}/{path}', wait_until='load')
    assert resp.ok, f'{path}: HTTP {resp.status}'
    return page

def texts(page, sel:str) -> list: return [t.strip() for t in page.locator(sel).all_inner_texts()]

def loaded_images(page) -> list:
    "src of every <img> in the article that the browser actually decoded (naturalWidth > 0)."
    return page.eval_on_selector_all('article img', 'els => els.filter(e => e.complete && e.naturalWidth > 0).map(e => e.src)')

def test_site_has_one_page_per_notebook(site):
    pages = {p.parent.name for p in site.glob('*/index.html')}
    nbs = {p.stem for p in (ROOT/'nbs').glob('[0-9]*.ipynb')} - {'99_all'}
    assert nbs <= pages, f'no page for {nbs - pages}'

def test_index_in_browser(browser):
    page = open_page(browser, 'index.html')
    assert texts(page, 'article h1')[0].startswith('fastai_shelve')
    h2 = texts(page, 'article h2')
    for h in ('Example', 'Kaggle, offline', 'Benchmark', 'Pictures'): assert h in h2, f'{h!r} not among {h2}'
    assert any('build_shelf(' in c for c in texts(page, 'article pre code'))
    imgs = loaded_images(page)
    for name in ('bench.png', 'show_batch.png', 'xray_augs_before_after.png'):
        assert any(s.endswith(name) for s in imgs), f'{name} not shown: {imgs}'
    nav = ' '.join(texts(page, 'nav'))
    assert 'Tutorials' in nav and 'Store' in nav
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS/'index.png')
    page.locator('img[src$="bench.png"]').first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS/'index_benchmark.png')

def test_tutorial_in_browser(browser):
    page = open_page(browser, '10_tutorial_ranzcr/')
    assert texts(page, 'article h1') == ['Tutorial: from a Kaggle folder of JPEGs to a trained model']
    h2 = texts(page, 'article h2')
    assert 'Build the shelf, once' in h2 and 'Train, predict' in h2
    code = '\n'.join(texts(page, 'article pre code'))
    assert 'build_shelf(' in code and 'fit_one_cycle' in code
    # the training table fastai printed: the cell is flagged slow, so the page shows the output saved in the notebook
    assert 'train_loss' in page.locator('article').inner_text()
    imgs = loaded_images(page)
    assert any('10_tutorial_ranzcr_files' in s for s in imgs), f'no show_batch output image: {imgs}'
    page.screenshot(path=SHOTS/'tutorial_ranzcr.png', full_page=True)

def test_stores_tutorial_in_browser(browser):
    page = open_page(browser, '12_tutorial_stores/')
    assert texts(page, 'article h1') == ['Tutorial: choosing a store']
    tables = ' '.join(texts(page, 'article table'))
    assert 'JPEG q95' in tables and 'PNG files + PIL' in tables  # the live measurement and the benchmark's table
    assert any('12_tutorial_stores_files' in s for s in loaded_images(page)), 'the square vs shortest-side figure is missing'
    page.screenshot(path=SHOTS/'tutorial_stores.png', full_page=True)

def test_api_page_has_show_doc_entries(browser):
    page = open_page(browser, '05_data/')
    h = texts(page, 'article h3')
    assert 'ShelfDataLoaders' in h and 'getattr' not in h, h  # the old names' lookup, for exported Learners, is no API
    assert 'ShelfGetter' in texts(open_page(browser, '05b_getters/'), 'article h3')
    assert 'group_col' in page.locator('article').inner_text()  # a signature's argument
    h = texts(open_page(browser, '05a_splits/'), 'article h3')
    for name in ('GroupSplitter', 'shelf_splitter'): assert name in h, f'{name} not among {h}'

def test_broken_notebook_fails_the_build(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source': '# Broken'},
             {'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [],
              'source': "raise ValueError('deliberately broken')"}]
    (nbs/'00_broken.ipynb').write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    cfg = yaml.safe_load((ROOT/'mkdocs.yml').read_text())
    cfg.update(docs_dir=str(nbs), hooks=[str(ROOT/'docs'/'hooks.py')])
    (tmp_path/'mkdocs.yml').write_text(yaml.safe_dump(cfg))
    r = mkdocs_build(tmp_path/'mkdocs.yml', tmp_path/'site')
    assert r.returncode != 0
    assert '00_broken.ipynb' in r.stderr and 'deliberately broken' in r.stderr, r.stderr[-3000:]
    assert not (tmp_path/'site'/'index.html').exists()
