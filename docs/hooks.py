"""mkdocs hooks: the notebooks in `nbs/` become the site's pages.

quarto (what `nbdev_docs` renders with) can't be installed offline: PyPI's `quarto-cli` downloads its binary at install
time. So mkdocs-material renders instead, from pages this hook makes the way nbdev's docs pipeline does: each notebook
is run as `nbdev_test` runs it (cells flagged `slow` are shown, not run) with nbdev's `add_show_docs`, so every exported
function gets a `show_doc` entry; then exported and hidden cells are dropped, directives stripped, and nbconvert writes
Markdown with the outputs (figures as PNG files). A notebook that raises fails the build, naming the notebook and cell.
"""
import os, re, time, hashlib, logging, warnings
from functools import partial
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter
from traitlets.config import Config
from fastcore.nbio import read_nb, write_nb, nb2str, does_cell_eval
from fastcore.xtras import working_directory
from execnb.shell import CaptureShell
from nbdev.config import get_config
from nbdev.process import NBProcessor
from nbdev.processors import add_show_docs, hide_, rm_export, hide_line
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger('mkdocs.hooks.notebooks')

def skip_flags(fn:Path) -> set:
    "Flags of cells `nbdev_test` leaves out (`tst_flags` in the project's config): the docs don't run them either."
    return set(get_config(fn.parent).tst_flags.split())

def _notebooks(config):
    "The numbered notebooks, but `99_all` (it only gathers the modules' names for `from fastai_shelve.all import *`)."
    return [f for f in sorted(Path(config.docs_dir).glob('[0-9]*.ipynb')) if f.stem != '99_all']

def _title(fn:Path) -> str:
    "The notebook's `# Title` (nbdev's convention), else its file name."
    for c in read_nb(fn).cells:
        if c.cell_type == 'markdown' and (m := re.match(r'#\s+(.+)', c.source.strip())): return m.group(1).strip()
    return fn.stem

def on_config(config):
    "Nav: the README as home, then tutorials (notebooks whose name says so), then one API page per module."
    nbs = _notebooks(config)
    tuts = [{_title(f): f'{f.stem}.md'} for f in nbs if '_tutorial_' in f.stem]
    api = [{_title(f): f'{f.stem}.md'} for f in nbs if '_tutorial_' not in f.stem]
    config.nav = [{'Home': 'index.md'}] + ([{'Tutorials': tuts}] if tuts else []) + [{'API': api}]
    return config

def _skip(cell, flags:set) -> bool:
    "nbdev_test's rule: not code, flagged, or not evaluated (`eval: false`, nbclient's `skip-execution` tag)."
    return cell.cell_type != 'code' or bool(flags & (cell.directives_ or {}).keys()) or not does_cell_eval(cell, True)

def run_notebook(fn:Path, show_docs:bool=True):
    "Run `fn` with nbdev's `show_doc` cells added; the executed notebook, or `PluginError` naming the failing cell."
    nb = NBProcessor(fn, procs=[add_show_docs] if show_docs else [], rm_directives=False, process=True).nb
    k = CaptureShell(fn, mpl_format='png')
    k.run_cell('from nbdev.showdoc import show_doc')
    os.environ['IN_TEST'] = '1'
    try:
        # libraries' deprecation notices (matplotlib on fastai tensors, ...) would fill the build log; the tests show them
        with working_directory(fn.parent), warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning); warnings.simplefilter('ignore', FutureWarning)
            k.run_all(nb, exc_stop=True, preproc=partial(_skip, flags=skip_flags(fn)), cell_timeout=600)
    except Exception as e:
        raise PluginError(f"notebook {fn} failed, so the docs were not built:\n{k.prettytb(fname=fn) or e}") from None
    finally: os.environ.pop('IN_TEST', None)
    return nb

_BAR = re.compile(r'^\s*(\S.*: )?\|[█-]*\|.*\]\s*$|^\s*█?\s*$')  # fastprogress's console bars, and their residue

def _terminal_view(text:str) -> str:
    "What a terminal would show of a stream: each line's last carriage-return segment; progress bars dropped."
    lines = [next((seg for seg in reversed(l.split('\r')) if seg.strip()), '') for l in text.split('\n')]
    return '\n'.join(l for l in lines if not _BAR.match(l)) + '\n'

def _tidy(cell):
    "Outputs as a terminal shows them, warnings (stderr) left out: the tests show those."
    cell.outputs = [o for o in cell.outputs if o.get('name') != 'stderr']
    for o in cell.outputs:
        if o.get('name') == 'stdout': o.text = _terminal_view(''.join(o.text))
    cell.outputs = [o for o in cell.outputs if o.get('name') != 'stdout' or o.text.strip()]
    cell.metadata.pop('execution', None)  # execnb's timings, which nbformat's schema refuses

def _for_display(cell, flags:set):
    "show_doc cells show only their output; skipped cells are marked so; warnings (stderr) are left out."
    if cell.cell_type != 'code': return
    _tidy(cell)
    if cell.pop('has_sd', False) or cell.source.startswith('show_doc('): cell.metadata['tags'] = ['remove_input']
    elif _skip(cell, flags): cell.source = f'# not run when the docs are built (flagged {", ".join(flags & cell.directives_.keys())})\n' + cell.source

def to_markdown(nb, stem:str, flags:set):
    "(markdown, {file name: bytes}) of an executed notebook, exported code and hidden cells left out."
    nb.metadata['language_info'] = {'name': 'python'}  # nbconvert's code fences take their language from here
    nb = NBProcessor(nb=nb, procs=[hide_line, hide_, rm_export, partial(_for_display, flags=flags)], rm_directives=True, process=True).nb
    c = Config()
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.TagRemovePreprocessor.enabled = True
    md, res = MarkdownExporter(config=c).from_notebook_node(nbformat.reads(nb2str(nb), as_version=4),
                                                         resources={'output_files_dir': f'{stem}_files'})
    # show_doc links each entry to its source on GitHub; this project has no public repository URL to link to
    md = re.sub(r'\[source\]\(/blob/[^)]*\)', '', md)
    # nbconvert puts blank lines between a cell's outputs; Markdown merges adjacent indented blocks, blank lines and all
    return re.sub(r'\n(?:[ \t]*\n){2,}', '\n\n', md), res.get('outputs', {})

def _index(root:Path) -> str:
    "The README as the home page, its links into `nbs/` made site-relative."
    md = (root/'README.md').read_text()
    md = re.sub(r'\]\(nbs/(\d\d_\w+)\.ipynb\)', r'](\1.md)', md)
    md = re.sub(r'^!\[[^]]*\]\(docs/screenshots/[^)]*\)\n', '', md, flags=re.M)  # the site's own screenshots
    return md.replace('](nbs/', '](')

# A folder where the build notes each notebook that ran without error (the digest of its file): the test suite sets it, so
# its notebook tests, which run them the same way, don't run them a second time.
RAN_ENV = 'FASTAI_SHELVE_NBS_RAN'

def nb_digest(fn:Path) -> str: return hashlib.sha256(Path(fn).read_bytes()).hexdigest()

def on_files(files, config):
    "Run every notebook and add its page (and figures) to the site."
    root = Path(config.config_file_path).parent
    if (root/'README.md').exists(): files.append(File.generated(config, 'index.md', content=_index(root)))
    for fn in _notebooks(config):
        t0 = time.time()
        nb = run_notebook(fn)
        if os.environ.get(RAN_ENV): (Path(os.environ[RAN_ENV])/f'{fn.stem}.ran').write_text(nb_digest(fn))
        md, outs = to_markdown(nb, fn.stem, skip_flags(fn))
        files.append(File.generated(config, f'{fn.stem}.md', content=md))
        for name, data in outs.items(): files.append(File.generated(config, name, content=data))
        log.info(f'{fn.name}: ran in {time.time()-t0:.1f}s, {len(outs)} figure(s)')
    return files

def save_outputs(fn:Path):
    "Run `fn` as the build does and keep the outputs in the notebook itself, so GitHub shows them too."
    flags = skip_flags(fn)
    nb = run_notebook(fn, show_docs=False)
    for c in nb.cells:  # cells the build leaves out (slow ones) keep the outputs they were saved with
        if c.cell_type != 'code' or _skip(c, flags): continue
        _tidy(c)
        for o in c.outputs:
            if o.get('output_type') == 'execute_result': o['execution_count'] = None  # as nbdev_clean leaves them
        c.execution_count = None
    write_nb(nb, fn)

if __name__ == '__main__':  # python docs/hooks.py nbs/03_fetch.ipynb ...: refresh the outputs notebooks are saved with
    import sys
    for f in sys.argv[1:]: save_outputs(Path(f)); print(f'{f}: outputs saved')
