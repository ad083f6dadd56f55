#!/usr/bin/env python
"""Execute notebooks top to bottom and store their outputs: the pictures, printed summaries and tables are the docs.

    python tools/run_notebooks.py                 # every notebook in nbs/ (chapters, tutorials, index)
    python tools/run_notebooks.py nbs/04_gradients.ipynb nbs/tutorials/01_attribution.ipynb

Each notebook runs in a fresh kernel of this Python (the installed netlens), on the offline path, from its own folder.
The stored text is made deterministic (no machine paths, memory addresses or progress-bar timings) and
`nbdev-clean` tidies the metadata. The notebook's metadata then gets a stamp of its code cells' sources
(`metadata.netlens.sources`): `tools/check_notebooks.py` fails in CI when a notebook's code changed since its
outputs were made. Exits non-zero if a notebook raises (its partial outputs are not written).
"""
import argparse, os, re, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from check_notebooks import notebooks, source_stamp, evaluated, STAMP_KEY  # one definition of the stamp, shared with the check

# Run before the first cell (and removed again): PNG figures of a size that reads well on a page
SETUP = """\
%matplotlib inline
%config InlineBackend.figure_formats = ['png']
%config InlineBackend.rc = {'figure.dpi': 80, 'savefig.dpi': 80}
import os; os.environ['NETLENS_NOTEBOOK_RUN'] = '1'"""

def _scrubbers():
    "Patterns replaced in stored text: machine paths (this checkout, site-packages, temp folders) and memory addresses"
    site = [p for p in sys.path if p.endswith('site-packages')]
    subs = [(re.escape(str(ROOT)) + '/?', ''), (r' at 0x[0-9a-fA-F]+>', '>')]
    subs += [(re.escape(s) + '/?', '') for s in site]
    subs += [(r'/tmp/[\w./-]+', '<tmp>'), (re.escape(str(Path.home())) + '/?', '~/')]
    subs += [(r'((?:time|forward pass): )\d[\d.]*( m?s\b| µs\b)', r'\1…\2')]      # measured times in a trace's summaries
    return [(re.compile(p), r) for p, r in subs]

def _is_progress(o) -> bool:
    "A fastprogress bar: its timings would change on every run, and the finished bar says nothing on a page"
    html = ''.join(o.get('data', {}).get('text/html', ''))
    return o.get('output_type') in ('display_data', 'update_display_data') and '<progress' in html

TQDM = re.compile(r'\d+%\|.*\| *\d+/\d+ \[\d+:\d+')   # a peer's tqdm bar on stderr: timings again

def _is_bar(o) -> bool: return o.get('output_type') == 'stream' and o.get('name') == 'stderr' and bool(TQDM.search(''.join(o['text'])))

ANSI = re.compile(r'\x1b\[[0-9;]*m')

def _clean_text(t, subs):
    for p, r in subs: t = p.sub(r, t)
    return t

def tidy(nb):
    "Deterministic stored outputs: no progress bars, no machine paths or addresses"
    subs = _scrubbers()
    for c in nb.cells:
        if c.cell_type != 'code': continue
        c.outputs = [o for o in c.outputs if not (_is_progress(o) or _is_bar(o))]
        for o in c.outputs:
            if 'text' in o: o['text'] = _clean_text(''.join(o['text']), subs)
            for k, v in o.get('data', {}).items():
                if k.startswith('text/'): o['data'][k] = _clean_text(''.join(v), subs)
            if o.get('output_type') == 'error': o['traceback'] = [_clean_text(t, subs) for t in o['traceback']]
    return nb

def _skipped(cell) -> bool:
    "Cells nbdev-test does not run either: `#| eval: false`, and those flagged `notest` or `slow`"
    return cell.cell_type == 'code' and not evaluated(cell)

def run(path: Path, timeout=600) -> float:
    "Execute `path` in place; the seconds it took"
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if _skipped(c): c.metadata.setdefault('tags', []).append('skip-execution')
    setup = nbformat.v4.new_code_cell(SETUP)
    nb.cells.insert(0, setup)
    start = time.time()
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}},
                            store_widget_state=False, record_timing=False)
    try: client.execute()
    finally:
        nb.cells.remove(setup)
        for c in nb.cells:
            if 'skip-execution' in c.metadata.get('tags', []): c.metadata.tags.remove('skip-execution')
            if not c.metadata.get('tags', True): del c.metadata['tags']
    tidy(nb)
    nb.metadata[STAMP_KEY] = {'sources': source_stamp(nb)}
    nbformat.write(nb, path)
    os.system(f'nbdev-clean --fname "{path}" >/dev/null 2>&1')
    return time.time() - start

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('paths', nargs='*', help='notebooks (default: every notebook under nbs/)')
    p.add_argument('--timeout', type=int, default=600, help='seconds a cell may run')
    p.add_argument('--jobs', type=int, default=2, help='notebooks run at once')
    a = p.parse_args(argv)
    paths = [Path(q).resolve() for q in a.paths] or notebooks()
    failed = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for q, f in [(q, pool.submit(run, q, a.timeout)) for q in paths]:
            try: print(f"{q.relative_to(ROOT)}: {f.result():.0f} s", flush=True)
            except Exception as e:
                failed.append(q)
                print(f"{q.relative_to(ROOT)}: FAILED\n{ANSI.sub('', str(e))[-3000:]}", flush=True)
    print(f"{len(paths) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
