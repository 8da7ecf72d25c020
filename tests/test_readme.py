"The README's checkable claims, against the code: its links, snippets, commands, CLI flags and benchmark table."
import ast, builtins, inspect, json, re, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT/'README.md').read_text()
# Names the snippets leave to the reader: their own table, folder, files and arrays
PLACEHOLDERS = {'df', 'path', 'dicom_files', 'series_df', 'test_files'}

def blocks(lang:str) -> list: return re.findall(rf'^```{lang}\n(.*?)^```', README, re.S | re.M)

def test_relative_links_resolve():
    links = [l for l in re.findall(r'\]\(([^)\s#]+)\)', README) if '://' not in l]
    named = re.findall(r'`((?:tests|nbs|docs|fastai_shelve|\.ci)/[\w./-]+\.(?:py|ipynb|json|png|yml))`', README)
    assert links and named
    assert not [l for l in links + named if not (ROOT/l).exists()]

def test_snippets_call_what_exists():
    "Every name a Python snippet uses is fastai's, ours, its own or a placeholder; our functions take its keywords."
    ns = {}
    exec('from fastai.vision.all import *\nfrom fastai_shelve.all import *', ns)
    for src in blocks('python'):
        tree = ast.parse(src)
        own = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        assert not used - own - set(ns) - set(dir(builtins)) - PLACEHOLDERS, src
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            f = call.func
            fn = (ns.get(f.id) if isinstance(f, ast.Name) else
                  getattr(ns.get(f.value.id), f.attr, None) if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None)
            if fn is None or not getattr(fn, '__module__', '').startswith('fastai_shelve'): continue
            params = inspect.signature(fn).parameters
            assert {k.arg for k in call.keywords} <= set(params), f'{ast.unparse(call)}: not in {list(params)}'

def test_commands_are_bash_and_ci_runs_the_test_command():
    for b in blocks('bash'): subprocess.run(['bash', '-n', '-c', b], check=True)
    awk = re.search(r"awk '(.*?)' README.md", (ROOT/'.ci'/'run').read_text())[1]
    got = subprocess.run(['awk', awk, 'README.md'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert got.strip() == re.search(r'<!-- test command -->\n```bash\n(.*?)```', README, re.S)[1].strip()

def test_cli_flags_exist():
    from fastcore.script import anno_parser
    from fastai_shelve.cli import COMMANDS
    block = README.split('## Command line', 1)[1].split('```')[1]
    lines = [l.split('#')[0] for l in block.splitlines() if l.startswith('fastai-shelve ')]
    assert len(lines) >= 8
    for l in lines:
        cmd, flags = l.split()[1], re.findall(r'(?<!\S)\[?(--[\w-]+)', l)
        if cmd.startswith('--'): continue
        opts = anno_parser(COMMANDS[cmd])._option_string_actions
        assert not [f for f in flags if f not in opts], l

def test_compressions_are_the_codecs():
    from fastai_shelve.codec import COMPRESSIONS
    listed = re.search(r'`fastai_shelve\.codec\.COMPRESSIONS`: ((?:`[\w-]+`,?\s*)+)', README)[1]
    assert tuple(re.findall(r'`([\w-]+)`', listed)) == COMPRESSIONS

def test_bench_table_is_the_committed_run():
    "The README's benchmark table is what `format_table` prints from the JSON it names."
    from fastai_shelve.bench import format_table
    d = json.loads((ROOT/re.search(r'JSON in `(nbs/images/bench_full_[\d-]+\.json)`', README)[1]).read_text())
    targets = [(t['target'], t['measured'], t['met'], t['margin']) for t in d['targets']]
    assert format_table(d['rows'], targets, d['facts']) in README
