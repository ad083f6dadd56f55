#!/usr/bin/env bash
# Rebuild nbs/images/tour/ (the tour's figures, which the index page shows) and README.md from nbs/index.ipynb without quarto:
# nbdev-proc-nbs runs nbdev's processors (hides #| hide cells, turns the `>` line into a summary),
# nbconvert writes markdown. Where quarto exists, `nbdev-readme` works too.
set -euo pipefail
cd "$(dirname "$0")/.."
netlens tour --out nbs/images/tour --no-progress
rm -f nbs/images/tour/index.html
nbdev-proc-nbs --file-glob index.ipynb >/dev/null 2>&1 || true  # it offers to install quarto first; the processing runs either way
test -f _proc/index.ipynb
# the README keeps the index's printed outputs; its figures are the tour's pictures, linked (an output's picture would
# be a file beside README.md that PyPI cannot show)
python - <<'PY'
import json
p = '_proc/index.ipynb'; nb = json.load(open(p))
for c in nb['cells']:
    if c['cell_type'] == 'code': c['outputs'] = [o for o in c.get('outputs', []) if not any(k.startswith('image/') for k in o.get('data', {}))]
json.dump(nb, open(p, 'w'))
PY
jupyter nbconvert --to markdown _proc/index.ipynb --output-dir . --output README --log-level WARN
# the YAML front matter becomes the title and summary; links relative to nbs/ become absolute (PyPI shows the README
# without the repository): images to their raw files, pages to GitHub
python - <<'PY'
import re, pathlib
p = pathlib.Path('README.md'); s = p.read_text()
m = re.match(r'\A---\n(.*?)\n---\n+', s, flags=re.S)
meta = dict(l.split(': ', 1) for l in m.group(1).splitlines() if ': ' in l)
s = f"# {meta['title']}\n\n> {meta['description']}\n\n" + s[m.end():]
lines, fence = [], False  # nbconvert leaves code cells' fences without a language, and `#|` cell directives in
RAW, BLOB = 'https://raw.githubusercontent.com/netlens/netlens/main/nbs/', 'https://github.com/netlens/netlens/blob/main/nbs/'
s = re.sub(r'\]\((?!https?://|#)([^)\s]+)\)', lambda m: '](' + (RAW if m.group(1).startswith('images/') else BLOB) + m.group(1) + ')', s)
for l in s.splitlines():
    if l.startswith('```'):
        if not fence and l == '```': l = '```python'
        fence = not fence
    elif fence and l.startswith('#| '): continue
    lines.append(l)
p.write_text('\n'.join(lines) + '\n')
PY
rm -rf _proc
echo "README.md and nbs/images/tour/ rebuilt"
