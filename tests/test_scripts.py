"""netlens in a script: long-running functions with their default progress, stdout piped to a file. Progress goes to a
terminal's stderr or nowhere (netlens.adapters.progress), never into stdout; unsized loaders (generators) are read; the
optimisers of optvis, dream and style draw their bars on a terminal's stderr only. The tour's command line without Graphviz
says what it skipped."""
import fcntl, os, pty, shutil, struct, subprocess, sys, termios, textwrap
import pytest

SCRIPT = textwrap.dedent('''
    import torch, torch.nn.functional as F
    from netlens.data import digits_cnn, digits_data, train_digits_cnn
    from netlens.similarity import compare_models
    from netlens.landscape import landscape2d, fourier_map
    from netlens.trace import log_forward_pass
    m = digits_cnn()
    x, y = digits_data('test')
    x, y = x[:48], y[:48]
    res = compare_models(m, m, ((x[i:i + 16],) for i in range(0, 48, 16)), ['conv2', 'conv3'], ['conv3'])
    print('cka', round(res['conv3', 'conv3'], 4))
    xs, ys, L = landscape2d(m, ((x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)), F.cross_entropy, (-.2, .2), (-.2, .2), 0.2, seed=0)
    print('landscape', tuple(L.shape))
    fm = fourier_map(m, (x[:4], y[:4]), max_freq=2)
    print('fourier', int((~fm.isnan()).sum()))
    log = log_forward_pass(m, x[:2])
    print('trace', len(log) > 10)
    t = train_digits_cnn(epochs=1)
    print('trained', t.training)
''')
EXPECTED = "cka 1.0\nlandscape (3, 3)\nfourier 25\ntrace True\ntrained False\n"

@pytest.mark.parametrize('stderr_tty', [False, True], ids=['stderr-pipe', 'stderr-terminal'])
def test_script_stdout_holds_only_what_it_prints(tmp_path, stderr_tty):
    (tmp_path / 'script.py').write_text(SCRIPT)
    out = tmp_path / 'out.txt'
    env = {**os.environ, 'COLUMNS': '100'}
    if stderr_tty:
        master, slave = pty.openpty()                               # a terminal on stderr only: bars belong there
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))   # 100 columns, as a real terminal has
        with open(out, 'w') as f:
            p = subprocess.Popen([sys.executable, 'script.py'], cwd=tmp_path, stdout=f, stderr=slave, env=env)
            os.close(slave)
            err = b''
            while True:
                try: chunk = os.read(master, 65536)
                except OSError: break                               # the child closed the terminal
                if not chunk: break
                err += chunk
            rc = p.wait()
        os.close(master)
        err = err.decode(errors='replace')
    else:
        with open(out, 'w') as f:
            p = subprocess.run([sys.executable, 'script.py'], cwd=tmp_path, stdout=f, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
        rc, err = p.returncode, p.stderr
    assert rc == 0, err[-3000:]
    assert out.read_text() == EXPECTED, (out.read_text(), err[-2000:])
    if stderr_tty: assert 'it/s' in err and '100%' in err, err[-2000:]   # the bars are there, on the terminal
    else: assert '\r' not in err and 'it/s' not in err, err[-2000:]       # a pipe gets no bar frames

TOUR_SCRIPT = textwrap.dedent('''
    import sys, netlens.tour as T
    T.TOUR_PAGES[:] = [p for p in T.TOUR_PAGES if p.slug in ('predictions', 'trace', 'photos')]   # the quick pages and the graph
    T.main(sys.argv[1:])
''')

def test_tour_without_graphviz_says_what_it_skipped(tmp_path):
    """`netlens tour`'s command line on a machine without Graphviz's `dot` (hidden from PATH): the operation graph is left
    out (no placeholder), not counted among the figures, and the closing line names it with how to install Graphviz"""
    path = os.pathsep.join(d for d in os.environ.get('PATH', '').split(os.pathsep) if d and not os.path.exists(os.path.join(d, 'dot')))
    assert shutil.which('dot', path=path) is None
    (tmp_path / 'tour.py').write_text(TOUR_SCRIPT)
    out = tmp_path / 'g'
    r = subprocess.run([sys.executable, 'tour.py', 'tour', '--out', str(out), '--no-progress'], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, 'PATH': path}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['index.html', 'photos.png', 'predictions.png']
    assert r.stdout == (f"netlens tour: 2 figures and {out / 'index.html'} (skipped: the trace page (Operation graph), "
                        "Graphviz's dot is not installed: apt-get install graphviz, brew install graphviz or conda install graphviz)\n"), r.stdout
    index = (out / 'index.html').read_text()
    assert 'Skipped: the trace page (Operation graph)' in index and 'trace.png' not in index

_SCRIPT = r'''
import torch, torch.nn as nn
from netlens.data import digits_cnn
from netlens.optvis import render, channel, jitter
from netlens.dream import deep_dream
from netlens.style import style_transfer
torch.manual_seed(0)
net = nn.Sequential(*[m for k in range(3) for m in (nn.Conv2d(3 if k == 0 else 8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))][:-1]).eval()
c, s = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
for opt in ('lbfgs', 'adam'):
    style_transfer(net, c, s, content_layers=['relu2_1'], style_layers=['relu1_1', 'relu2_1'], steps=3, optimizer=opt)
m = digits_cnn()
render(m, channel('conv2', 1), size=16, steps=3, transforms=[jitter(2)])
deep_dream(m, torch.rand(1, 1, 16, 16), 'res', octaves=2, steps=2)
'''

def _run_script(stderr):
    import subprocess, sys
    return subprocess.run([sys.executable, '-c', _SCRIPT], stdout=subprocess.PIPE, stderr=stderr, timeout=300)

def test_progress_in_a_script_with_stdout_piped():
    "Default show_progress from a script: no exception (style_transfer's bar was updated before it started), nothing in stdout"
    import subprocess
    r = _run_script(subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout == b''
    assert r.stderr == b''                                 # stderr is a pipe too: no bar anywhere

def test_progress_on_a_terminal_goes_to_stderr():
    "With stderr a terminal the bars are drawn there, and stdout still holds nothing"
    import os, pty, fcntl, termios, struct, threading
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))   # a terminal 100 columns wide (a new pty has 0)
    chunks = []
    def drain():                                           # read while the child writes, so a full pty buffer cannot block it
        while True:
            try: chunk = os.read(master, 65536)
            except OSError: return                         # EIO: the child closed the terminal
            if not chunk: return
            chunks.append(chunk)
    reader = threading.Thread(target=drain, daemon=True); reader.start()
    try:
        r = _run_script(slave)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    err = b''.join(chunks)
    assert r.returncode == 0, err.decode(errors='replace')[-2000:]
    assert r.stdout == b''
    assert b'/3 [' in err, err[-500:]                      # style_transfer's and render's bars, 3 steps each
