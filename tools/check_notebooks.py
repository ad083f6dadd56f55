#!/usr/bin/env python
"""Check that the notebooks are the documentation they should be.

    python tools/check_notebooks.py                    # every notebook: outputs stored and fresh (what CI runs)
    python tools/check_notebooks.py --structure        # also the chapter rules
    python tools/check_notebooks.py nbs/04_gradients.ipynb --structure

Outputs (always): each notebook was executed by tools/run_notebooks.py after its code last changed (the stamp of its
code cells' sources matches), every cell that draws stored a figure, no error or traceback is stored, and the
sizes stay small (a notebook under 2 MB, nbs/ under 25 MB).
Structure (--structure): a module chapter (one with `#| default_exp`) shows its first figure within its first 12
cells, no export cell is longer than 60 lines, and tests say what differs (no `test_eq(torch.equal(...), True)`).
Prints one line per problem and `N passed, N failed`; exits non-zero on any problem.
"""
import argparse, hashlib, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
STAMP_KEY = 'netlens'
MAX_NB, MAX_ALL = 2_000_000, 25_000_000
FIRST_FIGURE, MAX_EXPORT = 12, 60
# a call that draws: matplotlib, or one of netlens' show_/plot_ functions (those that return HTML are listed apart)
DRAWS = re.compile(r'(?<![\w.])(plt\.\w+|show_\w+|plot_\w+|\w+\.imshow|feature_atlas|\w+Explorer)\s*\(|\.(plot|show_\w+)\s*\(')
DRAWN_GRAPH = re.compile(r'^\S.*\.draw\((?![^)]*path=)[^)]*\)\s*;?$', re.M)   # a graph shown: the cell's value, not a file written
NOT_FIGURES = {'show_tokens', 'show_top_tokens', 'show_doc'}   # HTML in a notebook, or documentation

def notebooks(root=NBS) -> list[Path]:
    "Every notebook under nbs/ that nbdev processes (not in or named with a leading '.' or '_')"
    return sorted(p for p in root.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.relative_to(root).parts))

def _rel(p: Path) -> str:
    try: return str(p.relative_to(ROOT))
    except ValueError: return str(p)

def _src(cell) -> str: return ''.join(cell['source'])

def source_stamp(nb) -> str:
    "A hash of the notebook's code cells, in order: outputs made from other code are stale"
    h = hashlib.sha256()
    for c in nb['cells']:
        if c['cell_type'] == 'code': h.update(_src(c).encode() + b'\0')
    return h.hexdigest()[:16]

def _directives(src) -> set[str]:
    return {l[3:].strip().split(':')[0].split()[0] for l in src.splitlines() if l.startswith('#|') and l[3:].strip()}

def evaluated(c) -> bool:
    "Does nbdev-test run this cell? Not with `#| eval: false`, nor when flagged `notest` or `slow`"
    return not (re.search(r'^#\|\s*eval:\s*false', _src(c), re.M) or {'notest', 'slow'} & _directives(_src(c)))

def _unconditional(src) -> str:
    "The lines that always run: not under an `if`/`else`/`try`/`except` (one path may print instead of drawing), not an expected failure"
    keep, block = [], ''
    for l in src.splitlines():
        if not l.strip() or l.lstrip().startswith('#'): continue
        if not l[0].isspace(): block = l
        if not re.match(r'(if|elif|else|try|except)\b|with (expect_fail|ExceptionExpected)|test_fail', block): keep.append(l.split('  #')[0])
    return '\n'.join(keep)

def draws(c) -> bool:
    "Does the page show this code cell, and does it always call something that draws a figure (roughly)?"
    s = _src(c)
    if 'hide' in _directives(s) or re.search(r'^\s*(def|class)\s', s, re.M): return False
    code = _unconditional(s)
    names = {m.group(1) or m.group(2) for m in DRAWS.finditer(code)}
    return bool(names - NOT_FIGURES) or bool(DRAWN_GRAPH.search(code))

FIGURES = ('image/png', 'image/svg+xml', 'application/vnd.jupyter.widget-view+json')   # a live widget is the picture in a notebook

def has_figure(c) -> bool:
    return any(k in o.get('data', {}) for o in c.get('outputs', []) for k in FIGURES)

def check_outputs(p: Path, nb) -> list[str]:
    probs, code = [], [c for c in nb['cells'] if c['cell_type'] == 'code']
    stamp = nb.get('metadata', {}).get(STAMP_KEY, {}).get('sources')
    if stamp is None: probs.append("never executed by tools/run_notebooks.py (no stamp): run it and commit the outputs")
    elif stamp != source_stamp(nb): probs.append("its code changed after its outputs were made: re-run `python tools/run_notebooks.py " f"{_rel(p)}` and commit")
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        if any(o.get('output_type') == 'error' for o in c.get('outputs', [])): probs.append(f"cell {i} stores an error")
        if any('Traceback (most recent call last)' in ''.join(o.get('text', '')) for o in c.get('outputs', [])): probs.append(f"cell {i} stores a traceback")
        if stamp and evaluated(c) and draws(c) and not has_figure(c): probs.append(f"cell {i} draws but stores no figure")
    size = p.stat().st_size
    if size > MAX_NB: probs.append(f"{size / 1e6:.1f} MB, over {MAX_NB / 1e6:.0f} MB: smaller figures")
    return probs

def first_figure(nb) -> int | None:
    "Index of the first cell that shows a figure: stored, or (not executed yet) one that draws"
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] == 'code' and evaluated(c) and (has_figure(c) or (not c.get('outputs') and draws(c))): return i
    return None

def check_structure(p: Path, nb) -> list[str]:
    probs, cells = [], nb['cells']
    chapter = any('default_exp' in _directives(_src(c)) for c in cells if c['cell_type'] == 'code')
    if chapter:
        i = first_figure(nb)
        if i is None or i >= FIRST_FIGURE: probs.append(f"first figure at cell {i}, not within the first {FIRST_FIGURE} cells")
    for i, c in enumerate(cells):
        if c['cell_type'] != 'code': continue
        s = _src(c)
        if 'export' in _directives(s) and len(s.splitlines()) > MAX_EXPORT: probs.append(f"export cell {i} has {len(s.splitlines())} lines (at most {MAX_EXPORT})")
        if 'test_eq(torch.equal' in s: probs.append(f"cell {i}: test_eq(torch.equal(...), True) says nothing of what differs: torch.testing.assert_close")
    return probs

def main(argv=None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('paths', nargs='*')
    a.add_argument('--structure', action='store_true', help='also the chapter rules')
    a.add_argument('--no-outputs', action='store_true', help='only the chapter rules')
    o = a.parse_args(argv)
    paths = [Path(q).resolve() for q in o.paths] or notebooks()
    failed = 0
    for p in paths:
        nb = json.loads(p.read_text())
        probs = ([] if o.no_outputs else check_outputs(p, nb)) + (check_structure(p, nb) if o.structure or o.no_outputs else [])
        failed += bool(probs)
        for q in probs: print(f"{_rel(p)}: {q}")
    if not o.paths and not o.no_outputs:
        total = sum(p.stat().st_size for p in NBS.rglob('*') if p.is_file())
        if total > MAX_ALL: print(f"nbs/ holds {total / 1e6:.1f} MB, over {MAX_ALL / 1e6:.0f} MB"); failed += 1
    print(f"notebooks: {len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
