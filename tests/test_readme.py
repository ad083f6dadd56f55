"The README a new user reads: its two commands, its pictures"
import re, shutil
from pathlib import Path
root = Path(__file__).parent.parent

def test_readme_two_commands():
    block = re.search(r"```sh\n(.*?)```", (root/'README.md').read_text(), re.S).group(1)
    cmds = [l.split('  #')[0].strip() for l in block.splitlines() if l.strip()]
    assert cmds == ['pip install . && netlens tour', 'pip install ".[dev]" && bash tools/test.sh']

def test_readme_pictures_exist():
    "The README's pictures are absolute links (PyPI shows it without the repository) to files of nbs/images/"
    raw = 'https://raw.githubusercontent.com/netlens/netlens/main/'
    pics = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (root/'README.md').read_text())
    assert len(pics) >= 3 and all(p.startswith(raw + 'nbs/images/') and (root/p[len(raw):]).exists() for p in pics), pics

def test_console_script(tmp_path):
    import subprocess
    exe = shutil.which('netlens')
    assert exe, 'pip install put the `netlens` command on PATH'
    r = subprocess.run([exe, 'tour', '--out', str(tmp_path/'g'), '--no-progress'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'g'/'index.html').exists() and len(list((tmp_path/'g').glob('*.png'))) >= 5
