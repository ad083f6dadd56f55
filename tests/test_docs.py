"""The pages users read: nbdev's docs processing passes on every notebook, each processed page rendered to HTML
(nbconvert, standing in for Quarto, which cannot be installed here) opens in headless Chromium with every image
decoded and no error stored, every sidebar entry has its page, and the notebook check fails on a stale notebook."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
from test_widgets import browser, _require_browser   # the same Debian chromium + chromedriver

ROOT = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, str(ROOT / 'tools' / 'check_notebooks.py')]

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "nbs/ and the nbdev config copied to a temporary folder, and `nbdev-proc-nbs` run there (the step of nbdev-docs before Quarto)"
    d = tmp_path_factory.mktemp('site')
    shutil.copytree(ROOT / 'nbs', d / 'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', 'sidebar.yml'))
    shutil.copy(ROOT / 'pyproject.toml', d)
    r = subprocess.run(['nbdev-proc-nbs', '--n-workers', '1'], cwd=d, capture_output=True, text=True, timeout=900)
    return d, r

def _notebooks(folder): return sorted(p.relative_to(folder) for p in folder.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.relative_to(folder).parts))

def test_processing_passes_on_every_notebook(site):
    d, r = site
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'Found cells containing imports and other code' not in r.stderr, re.findall(r'---\n(.*?)\n---', r.stderr, re.S)[:3]
    assert _notebooks(d / '_proc') == _notebooks(ROOT / 'nbs')

def test_sidebar_entries_have_pages(site):
    d, r = site
    entries = re.findall(r'^\s*-\s+(\S+\.ipynb)\s*$', (d / '_proc' / 'sidebar.yml').read_text(), re.M)
    assert sorted(entries) == sorted(str(n) for n in _notebooks(ROOT / 'nbs'))   # every notebook is in the sidebar, once
    assert [e for e in entries if not (d / '_proc' / e).exists()] == []

CELL_KEYS = {'id', 'cell_type', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}

def _valid(p):
    "A processed notebook as nbformat reads it: nbdev adds its own keys to cells (Quarto ignores them, nbconvert refuses them)"
    import nbformat
    nb = json.loads(p.read_text())
    nb['cells'] = [{k: v for k, v in c.items() if k in CELL_KEYS} for c in nb['cells']]
    for c in nb['cells']: c['metadata'].pop('execution', None)    # the processor's timings of show_doc cells
    return nbformat.reads(json.dumps(nb), as_version=4)    # sources and texts as strings, as nbconvert expects

def test_pages_open_with_their_images(site, browser):
    "Every processed page, rendered to HTML, loads in Chromium with all its images decoded and no error output"
    from nbconvert import HTMLExporter
    d, _ = site
    proc, pages, n_images = d / '_proc', [], 0
    for nb in _notebooks(proc):
        html, _ = HTMLExporter().from_notebook_node(_valid(proc / nb), resources={'metadata': {'path': str((proc / nb).parent)}})
        page = (proc / nb).with_suffix('.html')
        page.write_text(html)
        browser.get(page.as_uri())
        s = browser.execute_script("""return {n: document.images.length,
            broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
            errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText')]
                    .map(e => e.textContent).filter(t => /Traceback \\(most recent call last\\)|Error:/.test(t)).map(t => t.slice(0, 200))}""")
        assert s['broken'] == [] and s['errors'] == [], (str(nb), s)
        pages.append(str(nb)); n_images += s['n']
    assert len(pages) == len(_notebooks(ROOT / 'nbs'))
    assert n_images >= len(pages)                                 # the pages show pictures
    print(f"{len(pages)} pages, {n_images} images, all decoded")

def _executed(tmp_path, name='00_core.ipynb'):
    p = tmp_path / name
    shutil.copy(ROOT / 'nbs' / name, p)
    return p

def test_check_passes_on_the_stored_notebooks():
    r = subprocess.run(CHECK + ['--structure'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]

def test_check_fails_on_a_stale_notebook(tmp_path):
    "A notebook whose code changed after its outputs were made fails the check, naming the command that re-runs it"
    p = _executed(tmp_path)
    assert subprocess.run(CHECK + [str(p)], capture_output=True, text=True).returncode == 0
    nb = json.loads(p.read_text())
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and c.get('outputs'))
    cell['source'] = ''.join(cell['source']) + '\n1 + 1'
    p.write_text(json.dumps(nb))
    r = subprocess.run(CHECK + [str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and 'its code changed after its outputs were made' in r.stdout and 'run_notebooks.py' in r.stdout

def test_check_fails_on_a_missing_figure(tmp_path):
    "A cell that draws but stores no figure fails the check; so does a stored error"
    p = _executed(tmp_path)
    nb = json.loads(p.read_text())
    i, cell = next((i, c) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' and any('image/png' in o.get('data', {}) for o in c.get('outputs', [])))
    cell['outputs'] = [o for o in cell['outputs'] if 'image/png' not in o.get('data', {})]
    cell['outputs'].append({'output_type': 'error', 'ename': 'ValueError', 'evalue': 'x', 'traceback': []})
    p.write_text(json.dumps(nb))
    r = subprocess.run(CHECK + [str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and f'cell {i} draws but stores no figure' in r.stdout and 'stores an error' in r.stdout
