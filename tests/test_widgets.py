"""netlens.widgets (nbs/13_widgets.ipynb): the attribution, channel and attention explorers.

Bad input to an explorer is refused with an error that names the problem and the fix, and the model is left as it was.

And the explorers in a real JupyterLab in headless Chromium, driven with real clicks and key presses.

JupyterLab (pip) serves a notebook that builds the attribution and channel explorers on the digits model and the
attention explorer on a tiny random-init ViT; Debian's chromium and chromedriver
(tools/install_browser.sh) drive it through selenium. Checks: each interaction gives a new picture and titles that match the
controls, pictures are shown at their PNG's pixel size inside the viewport, the layout wraps at 900 px, the busy state
shows during a slow render, End reaches the new maximum after a layer change, no JavaScript console error and no Python
traceback. Screenshots before and after each interaction go to $NETLENS_SCREENSHOTS (default: browser-screenshots/),
with timings.json (seconds from a control change to the new picture), and widgets_attribution.png, widgets_channels.png and
widgets_attention.png: each explorer's output as it first appears, the still pictures nbs/13_widgets.ipynb shows beside the
live widgets (copy them into nbs/images/ when the explorers' look changes).

Waits are for the state asserted, never for a fixed time: a control the kernel changes (a new slider, the class that
follows the image) may reach the page after the new picture, and a resized window is laid out asynchronously.

The browser test is skipped, with the reason, when chromium, chromedriver, selenium or jupyterlab is missing; under CI=true
it fails instead."""
import os, sys, json, time, shutil, socket, signal, secrets, subprocess, tempfile
from pathlib import Path
import pytest
import re
import torch, torch.nn as nn, torchvision
from transformers import GPT2Config, GPT2LMHeadModel
from netlens.core import normalize
from netlens.data import digits_cnn, digits_data, sample_image
from netlens.hooks import ModelSnapshot
from netlens.attention import fuse_heads
from netlens.widgets import AttributionExplorer, ChannelExplorer, AttentionExplorer

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get('NETLENS_SCREENSHOTS', ROOT / 'browser-screenshots'))
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
DRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
# every wait's limit is multiplied by this: on a machine shared with other work (a load of 10 on 2 cores makes the channel
# explorer's first render take 2 minutes instead of seconds) set NETLENS_BROWSER_TIMEOUT_SCALE=4; what is waited for is the same
SCALE = float(os.environ.get('NETLENS_BROWSER_TIMEOUT_SCALE', '1'))

def _missing():
    miss = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    for mod in ('selenium', 'jupyterlab', 'ipykernel'):
        try: __import__(mod)
        except ImportError: miss.append(f'python package {mod}')
    return miss

def _require_browser():
    miss = _missing()
    if not miss: return
    why = f"the browser test needs {', '.join(miss)}: run `bash tools/install_browser.sh` (Debian chromium + chromedriver) and `pip install '.[dev]'`"
    if os.environ.get('CI', '').lower() == 'true': pytest.fail(f'CI=true and {why}')
    pytest.skip(why)

NOTEBOOK = {
    'cells': [
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None, 'source':
         "from netlens.data import digits_cnn, digits_data\nfrom netlens.widgets import AttributionExplorer, ChannelExplorer\n"
         "model = digits_cnn(); x, y = digits_data('test')\nex = AttributionExplorer(model, x[:8])\nex"},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None, 'source':
         "cx = ChannelExplorer(model, size=32, steps=96)\ncx"},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None, 'source':
         "import torch, torchvision\nfrom netlens.data import sample_image\nfrom netlens.widgets import AttentionExplorer\ntorch.manual_seed(0)\n"
         "vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=37, num_classes=10).eval()\n"
         "photos = torch.stack([sample_image(n, size=32) for n in ('chelsea', 'astronaut', 'coffee')])\n"
         "ax = AttentionExplorer(vit, photos, query=6)\nax"}],
    'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
    'nbformat': 4, 'nbformat_minor': 5}

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def lab():
    "A JupyterLab server on 127.0.0.1 serving a temporary folder with the explorers' notebook; stopped by its PID"
    _require_browser()
    d = Path(tempfile.mkdtemp(prefix='netlens-lab-'))
    (d / 'explorers.ipynb').write_text(json.dumps(NOTEBOOK))
    (d / 'config' / 'labconfig').mkdir(parents=True)    # no "official Jupyter news?" toast over the screenshots
    (d / 'config' / 'labconfig' / 'page_config.json').write_text(json.dumps({'disabledExtensions': {'@jupyterlab/apputils-extension:announcements': True}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(d / 'config'), JUPYTER_RUNTIME_DIR=str(d / 'runtime'), PYTHONUNBUFFERED='1')
    env.pop('CI', None)   # not read by Jupyter; keep its kernel's environment plain
    log = open(d / 'lab.log', 'w')
    p = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
                          f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={d}', '--LabApp.expose_app_in_browser=True',
                          '--ServerApp.open_browser=False', '--LabApp.news_url=None', '--allow-root'],
                         cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(int(300 * SCALE)):
            if p.poll() is not None: raise RuntimeError(f'jupyter lab exited: {(d / "lab.log").read_text()[-3000:]}')
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=0.2): break
            except OSError: time.sleep(0.1)
        yield dict(url=f'http://127.0.0.1:{port}/lab/tree/explorers.ipynb?token={token}', dir=d, log=d / 'lab.log')
    finally:
        os.killpg(p.pid, signal.SIGTERM)          # the server and the kernels it started (its own session)
        try: p.wait(15)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)

@pytest.fixture(scope='module')
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1280,1100',
              '--force-device-scale-factor=1', '--lang=en-US'): o.add_argument(a)
    o.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(DRIVER), options=o)
    yield d
    d.quit()

# JavaScript run in the page: the notebook's kernel as 'connection/status' ('connected/idle' when it takes cells), or null
JS_KERNEL = r"""
const w = window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell') && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return k ? k.connectionStatus + '/' + k.status : null;
"""

# JavaScript run in the page: the explorers' DOM read as data
JS_STATE = r"""
const root = document.querySelectorAll('.jp-Notebook .jp-Cell')[arguments[0]].querySelector('.jp-OutputArea');
if (!root) return null;
const q = s => [...root.querySelectorAll(s)];
const vis = e => e.offsetParent !== null;
const ctl = lbl => q('.widget-inline-hbox').find(e => { const l = e.querySelector(':scope > .widget-label'); return l && l.textContent.trim() === lbl; });
const sel = l => { const e = ctl(l); return e && e.querySelector('select') ? e.querySelector('select').value : null; };
const slider = l => { const e = ctl(l); if (!e) return null; const h = e.querySelector('.noUi-handle');
                      return h ? {value: +h.getAttribute('aria-valuenow'), max: +h.getAttribute('aria-valuemax'), disabled: e.classList.contains('mod-disabled') || !!e.querySelector('[disabled]')} : null; };
const imgs = q('img.widget-image').filter(vis).map(i => { const r = i.getBoundingClientRect();
   return {src: i.src.length + ':' + i.src.slice(-40), nw: i.naturalWidth, nh: i.naturalHeight, w: r.width, h: r.height, right: r.right, render: getComputedStyle(i).imageRendering}; });
const text = s => q(s).filter(vis).map(e => e.textContent.trim());
return {imgs, titles: text('.widget-html-content b').concat(text('.widget-html-content')).filter(t => t.length < 120),
        status: text('.widget-html-content').join(' | '), busy: q('.netlens-busy').length > 0,
        progress: q('.widget-hprogress').filter(e => getComputedStyle(e).visibility !== 'hidden' && vis(e)).length,
        method: sel('method'), compare: sel('compare'), layer: sel('layer'), sign: sel('sign'),
        head: ctl('head') && ctl('head').querySelector('select') ? ctl('head').querySelector('select').selectedOptions[0].textContent : null,
        query: slider('query'),
        layers: ctl('layer') ? [...ctl('layer').querySelectorAll('option')].map(o => o.value) : [],
        channel: slider('channel'), image: slider('image'),
        target: ctl('class') && ctl('class').querySelector('input') ? +ctl('class').querySelector('input').value : null,
        errors: text('.netlens-error'), tracebacks: q('[data-mime-type="application/vnd.jupyter.stderr"]').map(e => e.textContent.slice(0, 500)),
        scrollW: root.scrollWidth, clientW: root.clientWidth, viewport: window.innerWidth};
"""

class Page:
    "The JupyterLab page through selenium: the explorers' state, screenshots, interactions and waits"
    def __init__(self, d, shots):
        self.d, self.shots, self.n, self.timings = d, shots, 0, {}
    def state(self, cell): return self.d.execute_script(JS_STATE, cell)
    def shot(self, name):
        self.n += 1
        self.d.save_screenshot(str(self.shots / f'{self.n:02d}-{name}.png'))
    def el(self, cell, css, label=None):
        "The element `css` inside the control labelled `label` (or anywhere) in cell `cell`'s output"
        return self.d.execute_script("""
            const root = document.querySelectorAll('.jp-Notebook .jp-Cell')[arguments[0]].querySelector('.jp-OutputArea');
            const boxes = arguments[2] === null ? [root] : [...root.querySelectorAll('.widget-inline-hbox')].filter(e => {
                const l = e.querySelector(':scope > .widget-label'); return l && l.textContent.trim() === arguments[2]; });
            return boxes.length ? boxes[0].querySelector(arguments[1]) : null;""", cell, css, label)
    def settled(self, cell, before=None, timeout=60):
        "Wait until cell `cell`'s explorer has drawn (no busy state, 'drawn in' shown) and, given `before`, its pictures changed; the state and seconds"
        t0, timeout = time.time(), timeout * SCALE
        while time.time() - t0 < timeout:
            s = self.state(cell)
            if s and s['errors']: raise AssertionError(f"cell {cell}: the explorer shows an error: {s['errors']}")
            if s and s['imgs'] and not s['busy'] and 'drawn in' in s['status'] and (before is None or [i['src'] for i in s['imgs']] != [i['src'] for i in before['imgs']]):
                return s, time.time() - t0
            time.sleep(0.02)
        raise AssertionError(f'cell {cell}: no new picture within {timeout} s: {self.state(cell)}')
    def resized(self, cell, w, h):
        "Resize the window to `w` x `h` and wait until cell `cell`'s output area has been laid out anew at that width; its state"
        before = self.state(cell)
        self.d.set_window_size(w, h)
        return self.until(cell, lambda s: s['viewport'] != before['viewport'] and s['clientW'] != before['clientW'])
    def docs_shot(self, cell, name):
        "The output area of cell `cell` scrolled to the top of the notebook, as `widgets_<name>.png` (the docs' still picture of the explorer)"
        from selenium.webdriver.common.by import By
        out = self.d.find_elements(By.CSS_SELECTOR, '.jp-Notebook .jp-Cell')[cell].find_element(By.CSS_SELECTOR, '.jp-OutputArea')
        self.d.execute_script("arguments[0].scrollIntoView({block: 'start'})", out)
        self.d.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[arguments.length - 1]))")   # painted
        out.screenshot(str(self.shots / f'widgets_{name}.png'))
    def until(self, cell, pred, timeout=30):
        "The state of cell `cell` once `pred(state)` holds"
        t0, timeout = time.time(), timeout * SCALE
        while time.time() - t0 < timeout:
            s = self.state(cell)
            if s and pred(s): return s
            time.sleep(0.02)
        raise AssertionError(f'cell {cell}: timed out waiting: {self.state(cell)}')
    def act(self, cell, name, do, expect_change=True, until=None):
        """Screenshot, `do()` the interaction, wait for the new picture (and, given `until`, for the controls the kernel changes to
        reach `until(state)`: a new slider's view or a field's new value may arrive after the picture), screenshot; the new state"""
        before = self.state(cell)
        self.shot(f'{name}-before')
        t0 = time.time(); do()
        s, _ = self.settled(cell, before if expect_change else None)
        if until is not None: s = self.until(cell, lambda s: _holds(until, s) and not s['busy'] and 'drawn in' in s['status'])
        self.timings[name] = round(time.time() - t0, 3)
        self.shot(f'{name}-after')
        assert not s['errors'] and not s['tracebacks'], (name, s['errors'], s['tracebacks'])
        return s

def _holds(pred, s):
    "Whether `pred(s)` holds: true, and raising no AssertionError (as `_title_matches` does on a mismatch)"
    try: return bool(pred(s))
    except (AssertionError, StopIteration, KeyError, TypeError): return False

def _check_sizes(s, where):
    for i in s['imgs']:
        assert (round(i['w']), round(i['h'])) == (i['nw'], i['nh']), f'{where}: a {i["nw"]}x{i["nh"]} picture is shown at {i["w"]}x{i["h"]}'
        assert i['right'] <= s['viewport'] + 1, f'{where}: a picture reaches {i["right"]} px, past the viewport ({s["viewport"]} px)'
        assert i['render'] == 'pixelated', f'{where}: image-rendering is {i["render"]}'

def _title_matches(s):
    "The map's title names the state the controls show"
    t = next(t for t in s['titles'] if t.startswith(s['method'] + ','  ) or t.startswith(s['method'] + ' at'))
    assert t.endswith(f"class {s['target']}"), (t, s['target'])
    if s['method'] in ('GradCAM', 'GradCAM++', 'XGradCAM', 'LayerCAM', 'guided GradCAM'): assert f" at {s['layer']}" in t, (t, s['layer'])
    else: assert ' at ' not in t, t
    if s['method'] in ('GradCAM', 'GradCAM++', 'XGradCAM', 'LayerCAM'):
        ch = s['channel']['value']
        assert t.split(' at ')[1].split(',')[1].strip() == ('all channels' if ch < 0 else f'channel {ch}'), (t, ch)
    else: assert 'channel' not in t, t
    return t

def test_explorers_in_jupyterlab(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    SHOTS.mkdir(parents=True, exist_ok=True)
    for f in SHOTS.glob('*.png'): f.unlink()
    d, t_start = browser, time.time()
    d.get(lab['url'])
    for _ in range(int(600 * SCALE)):   # the notebook open, its kernel connected and idle: "run all" sent earlier runs nothing
        if d.execute_script(JS_KERNEL) == 'connected/idle': break
        time.sleep(0.1)
    else: raise AssertionError(f'JupyterLab did not open the notebook with a ready kernel: {d.execute_script(JS_KERNEL)}')
    d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    pg = Page(d, SHOTS)
    pg.settled(0, timeout=300)                    # the kernel started, imported torch and netlens, drew the first explorer
    pg.settled(1, timeout=120); pg.settled(2, timeout=120)   # every cell has run: the kernel takes the clicks at once
    s, _ = pg.settled(0)
    pg.shot('attribution-opened'); pg.docs_shot(0, 'attribution')
    assert (s['method'], s['layer'], s['channel']['value'], s['target']) == ('GradCAM', 'conv3', -1, 7), s
    _title_matches(s); _check_sizes(s, 'opened')
    assert [(i['nw'], i['nh']) for i in s['imgs']][:2] == [(192, 192), (192, 192)]
    assert 'bn2' not in s['layers'] and 'conv2' in s['layers']
    # method: a real selection in the dropdown
    sel = lambda lbl, v: lambda: Select(pg.el(0, 'select', lbl)).select_by_visible_text(v)
    s = pg.act(0, 'method-saliency', sel('method', 'saliency'), until=lambda s: s['channel']['disabled'] and _title_matches(s))
    assert _title_matches(s) == 'saliency, class 7' and s['channel']['disabled'], s
    s = pg.act(0, 'method-gradcam', sel('method', 'GradCAM'))
    s = pg.act(0, 'layer-conv2', sel('layer', 'conv2'), until=lambda s: s['channel']['max'] == 31 and _title_matches(s))
    assert s['channel']['max'] == 31 and _title_matches(s)
    # channel: click the handle, then keys
    def keys(cell, lbl, *ks):
        def f():
            h = pg.el(cell, '.noUi-handle', lbl); h.click()
            for k in ks: h.send_keys(k)
        return f
    s = pg.act(0, 'channel-end', keys(0, 'channel', Keys.END))
    assert s['channel']['value'] == 31 and _title_matches(s).startswith('GradCAM at conv2, channel 31'), s
    s = pg.act(0, 'channel-left', keys(0, 'channel', Keys.ARROW_LEFT))
    assert s['channel']['value'] == 30 and _title_matches(s)
    s = pg.act(0, 'sign-all', sel('sign', 'all'))
    assert 'red raises the score of class 7' in s['status'] + ' '.join(s['titles']) or s['sign'] == 'all'
    s = pg.act(0, 'compare-ig', sel('compare', 'integrated gradients'))
    assert len(s['imgs']) == 3 and any(t == 'integrated gradients, class 7' for t in s['titles']), s
    _check_sizes(s, 'compare')
    # a prediction's button: attribute the second most likely class
    s = pg.act(0, 'prediction-2', lambda: [e for e in d.find_elements(By.CSS_SELECTOR, '.jp-Notebook .jp-Cell')[0].find_elements(By.CSS_SELECTOR, 'button.widget-button')][1].click(),
               until=lambda s: s['target'] != 7 and _title_matches(s))
    assert s['target'] != 7 and _title_matches(s), s
    s = pg.act(0, 'image-right', keys(0, 'image', Keys.ARROW_RIGHT), until=_title_matches)   # the class follows the image's prediction
    assert s['image']['value'] == 1 and any(t.startswith('image 1,') for t in s['titles']) and _title_matches(s), s
    def type_class():
        i = pg.el(0, 'input', 'class'); i.send_keys(Keys.CONTROL, 'a'); i.send_keys('3', Keys.ENTER)
    s = pg.act(0, 'class-3', type_class, until=lambda s: s['target'] == 3 and _title_matches(s))
    assert s['target'] == 3 and _title_matches(s).endswith('class 3'), s
    pg.shot('all-layers-before')
    pg.el(0, 'input[type=checkbox]').click()
    s = pg.until(0, lambda s: 'bn2' in s['layers'])   # the longer list and the kept layer arrive in one message (widgets._set_options)
    pg.shot('all-layers-after')
    assert s['layer'] == 'conv2', f"ticking 'all layers' dropped the chosen layer conv2: {s['layer']}"
    s = pg.until(0, lambda s: not s['busy'] and 'drawn in' in s['status'])
    assert s['layer'] == 'conv2' and _title_matches(s)
    s = pg.resized(0, 900, 1100); pg.shot('attribution-900px')
    assert s['scrollW'] <= s['clientW'] + 1, f"at 900 px the explorer overflows: {s['scrollW']} > {s['clientW']}"
    _check_sizes(s, '900 px')
    pg.resized(0, 1280, 1100)
    # the channel explorer: End after a layer change reaches the new maximum (ipywidgets' End-key bug), busy while rendering
    d.execute_script("document.querySelectorAll('.jp-Notebook .jp-Cell')[1].scrollIntoView()")
    s, _ = pg.settled(1, timeout=120)
    pg.shot('channels-opened'); pg.docs_shot(1, 'channels')
    assert (s['layer'], s['channel']['max']) == ('stem.0', 15) and 'stem.0 channel 0' in s['titles'], s
    _check_sizes(s, 'channels')
    before = s
    Select(pg.el(1, 'select', 'layer')).select_by_visible_text('conv3')
    busy_seen, t0 = False, time.time()
    while time.time() - t0 < 10 * SCALE and not busy_seen:
        b = pg.state(1); busy_seen = b['busy'] and b['progress'] > 0 and 'rendering conv3 channel 0' in b['status']
    pg.shot('channels-busy')
    assert busy_seen, f"no busy state during the render: {b['busy'], b['progress'], b['status']}"
    s, dt = pg.settled(1, before, timeout=120)
    pg.timings['channels-layer-conv3 (render)'] = round(time.time() - t0, 3)
    s = pg.act(1, 'channels-end', keys(1, 'channel', Keys.END), until=lambda s: s['channel']['value'] == 63 and 'conv3 channel 63' in s['titles'])
    assert s['channel'] == {'value': 63, 'max': 63, 'disabled': False} and 'conv3 channel 63' in s['titles'], s
    s = pg.act(1, 'channels-left', keys(1, 'channel', Keys.ARROW_LEFT))
    assert 'conv3 channel 62' in s['titles'], s
    # three quick key presses: the explorer ends showing the last (each press reaches the kernel on its own, so it may draw between them)
    pg.act(1, 'channels-3-keys', keys(1, 'channel', Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT))
    s = pg.until(1, lambda s: s['channel']['value'] == 59 and 'conv3 channel 59' in s['titles'] and not s['busy'] and 'drawn in' in s['status'])
    pg.shot('channels-3-keys-settled')
    # the attention explorer: a head and a layer from the dropdowns, a query by key; new pictures, titles naming them, at 900 px too
    L0, L1 = (f'encoder.layers.encoder_layer_{k}.self_attention' for k in (0, 1))
    d.execute_script("document.querySelectorAll('.jp-Notebook .jp-Cell')[2].scrollIntoView()")
    s, _ = pg.settled(2, timeout=120)
    pg.shot('attention-opened'); pg.docs_shot(2, 'attention')
    assert (s['layer'], s['head'], s['query']['value'], s['query']['max']) == (L1, 'mean', 6, 16), s
    assert f'{L1}, head mean' in s['titles'] and len(s['imgs']) == 3, s
    _check_sizes(s, 'attention')
    sel2 = lambda cell, lbl, v: lambda: Select(pg.el(cell, 'select', lbl)).select_by_visible_text(v)
    s = pg.act(2, 'attention-head-1', sel2(2, 'head', '1'))
    assert s['head'] == '1' and f'{L1}, head 1' in s['titles'] and f'rollout through {L1}' in s['titles'], s
    s = pg.act(2, 'attention-layer-0', sel2(2, 'layer', L0), until=lambda s: (s['layer'], s['head']) == (L0, '1') and f'{L0}, head 1' in s['titles'])
    assert (s['layer'], s['head']) == (L0, '1') and f'{L0}, head 1' in s['titles'] and f'rollout through {L0}' in s['titles'], s
    s = pg.act(2, 'attention-query-right', keys(2, 'query', Keys.ARROW_RIGHT))
    assert s['query']['value'] == 7 and any(t.endswith('attention of query 7, patch (1, 2)') for t in s['titles']), s
    s = pg.resized(2, 900, 1100); pg.shot('attention-900px')
    assert s['scrollW'] <= s['clientW'] + 1, f"at 900 px the attention explorer overflows: {s['scrollW']} > {s['clientW']}"
    _check_sizes(s, 'attention 900 px')
    pg.resized(2, 1280, 1100)
    severe = [e for e in d.get_log('browser') if e['level'] == 'SEVERE']
    (SHOTS / 'timings.json').write_text(json.dumps(dict(pg.timings, total_s=round(time.time() - t_start, 1)), indent=1))
    print('seconds from a control change to the new picture:', pg.timings)
    assert not severe, f'JavaScript console errors: {severe}'
    assert 'Traceback' not in lab['log'].read_text(), lab['log'].read_text()[-3000:]

@pytest.fixture(scope='module')
def digits():
    model = digits_cnn()
    x, y = digits_data('test')
    snap = ModelSnapshot(model)
    yield model, x[:3]
    assert snap.diff(model) == []

class Pair(nn.Module):
    "A model whose output is a tuple: the image, then the scores"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return x, self.m(x)

def _nan_at_1(x):
    bad = x[:3].clone(); bad[1, 0, 1, 1] = float('nan')
    return bad

# (what, exception, message, call(model, x)) with x three held-out digits (3, 1, 32, 32) in [0, 1]
CASES = [
    ('normalised', ValueError, 'pass denorm=True', lambda m, x: AttributionExplorer(m, normalize(x[:1], [0.5], [0.2]))),
    ('nan', ValueError, 'at examples [1]', lambda m, x: AttributionExplorer(m, _nan_at_1(x))),
    ('empty', ValueError, 'x is empty', lambda m, x: AttributionExplorer(m, x[:0])),
    ('channels', ValueError, 'the model takes 1', lambda m, x: AttributionExplorer(m, x[:1].expand(1, 3, 32, 32))),
    # the target is a class of the model, never clamped
    ('target-range', IndexError, 'target 12 is out of range: the model has 10 classes', lambda m, x: AttributionExplorer(m, x[:1], target=12)),
    ('target-float', TypeError, 'target must be an integer index, got 2.5', lambda m, x: AttributionExplorer(m, x[:1], target=2.5)),
    ('target-bool', TypeError, 'target must be an integer index', lambda m, x: AttributionExplorer(m, x[:1], target=torch.tensor(True))),
    ('classes', ValueError, 'classes has 3 names, the model has 10', lambda m, x: AttributionExplorer(m, x[:1], classes='abc')),
    ('method', ValueError, 'method must be one of', lambda m, x: AttributionExplorer(m, x[:1], method='grad_cam+')),
    # a tuple output: its first tensor, here the image, is not scores
    ('output', ValueError, 'must be scores (N, classes), got shape (1, 1, 32, 32)', lambda m, x: AttributionExplorer(Pair(m), x[:1])),
    ('layer', KeyError, "closest: 'conv3'", lambda m, x: AttributionExplorer(m, x[:1], layers=['conv9'])),
    ('channel-size', ValueError, 'size must be an integer >= 1, got 0', lambda m, x: ChannelExplorer(m, size=0)),
    ('channel-steps', ValueError, 'steps must be an integer >= 1, got 0', lambda m, x: ChannelExplorer(m, size=16, steps=0)),
    ('channel-layer', KeyError, "closest: 'conv3'", lambda m, x: ChannelExplorer(m, layers=['conv9'], size=16, steps=1)),
]

@pytest.mark.parametrize('exc, msg, call', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_attribution_and_channel_explorers_refuse_bad_input(digits, exc, msg, call):
    model, x = digits
    with pytest.raises(exc, match=re.escape(msg)): call(model, x)

@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=37, num_classes=10).eval()
    photos = torch.stack([sample_image(n, size=32) for n in ('chelsea', 'astronaut', 'coffee')])
    return vit, photos

@pytest.fixture(scope='module')
def gpt():
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100)).eval()
    words = 'the cat sat on the mat and purred'.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    batch = {'input_ids': torch.tensor([[vocab[w] for w in words], [vocab[w] for w in words[::-1]]])}
    return gpt, batch, words

def test_attention_explorer_tokens_must_match_the_examples(gpt):
    model, batch, words = gpt
    with pytest.raises(ValueError, match=re.escape('tokens must hold one list of 8 strings per example (2 lists)')):
        AttentionExplorer(model, batch, tokens=words)

@pytest.mark.parametrize('kw, exc, msg', [
    (dict(head=2), ValueError, "head must be a head index 0..1 or one of ('mean', 'max', 'min'), got 2"),
    (dict(query=17), IndexError, 'query'),
    (dict(grid=(3, 3)), ValueError, 'grid=(3, 3) and prefix=1 make 10 tokens, the attention layers have [17]'),
], ids=['head', 'query', 'grid'])
def test_attention_explorer_refuses_bad_arguments(vit, kw, exc, msg):
    model, photos = vit
    with pytest.raises(exc, match=re.escape(msg)): AttentionExplorer(model, photos[:1], **kw)

def test_attention_explorer_refuses_unscaled_images(vit):
    model, photos = vit
    with pytest.raises(ValueError, match=re.escape('divide by 255')): AttentionExplorer(model, photos[:1] * 255)

def test_attention_explorer_needs_attention(digits):
    model, x = digits
    with pytest.raises(ValueError, match=re.escape('ran no attention op')): AttentionExplorer(model, x[:1], grid=(4, 4))

def test_fuse_heads_names_the_head_count():
    with pytest.raises(IndexError, match=re.escape('this layer has 2 heads')): fuse_heads(torch.rand(2, 3, 3), 5)
