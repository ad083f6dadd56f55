"What users install: the wheel and the sdist hold every module and asset of netlens, and the tests run against the installed package"
import os, shutil, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'netlens').rglob('*.py'))
ASSETS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'netlens' / 'assets').iterdir())

@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    "The sdist and the wheel built from a copy of the project (so nothing is written into the checkout)"
    tmp = tmp_path_factory.mktemp('dist')
    src = tmp / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns('.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', '_proc', 'netlens-tour', '.pytest_cache'))
    subprocess.run([sys.executable, '-m', 'build', '--sdist', '--wheel', '--no-isolation', '--outdir', str(tmp / 'out'), str(src)],
                   check=True, capture_output=True, text=True)
    return next((tmp / 'out').glob('*.tar.gz')), next((tmp / 'out').glob('*.whl'))

def test_distribution_name_version_license(dists):
    "Published as torch-netlens 0.1.0 (the import stays netlens), with the Apache-2.0 LICENSE in the sdist and the wheel"
    import netlens
    sdist, wheel = dists
    v = netlens.__version__
    assert v == '0.1.0'
    assert sdist.name == f'torch_netlens-{v}.tar.gz' and wheel.name.startswith(f'torch_netlens-{v}-')
    with zipfile.ZipFile(wheel) as z:
        lic = [n for n in z.namelist() if n.endswith('/LICENSE')]
        meta = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
        assert lic and 'Apache License' in z.read(lic[0]).decode()
    assert 'Name: torch-netlens' in meta and 'License-Expression: Apache-2.0' in meta and 'example.com' not in meta
    with tarfile.open(sdist) as t: assert f'torch_netlens-{v}/LICENSE' in t.getnames()

def test_long_description_links_are_absolute(dists):
    "PyPI shows the README without the repository: every link and image in it must be absolute"
    with zipfile.ZipFile(dists[1]) as z: meta = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
    import re
    targets = re.findall(r'\]\(([^)\s]+)', meta) + re.findall(r'src="([^"]+)"', meta)
    assert targets and [t for t in targets if not t.startswith(('http://', 'https://', '#'))] == []

def test_version_command():
    exe = shutil.which('netlens')
    r = subprocess.run([exe, '--version'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == 'netlens 0.1.0', (r.stdout, r.stderr)

def test_wheel_holds_every_module(dists):
    with zipfile.ZipFile(dists[1]) as z: names = set(z.namelist())
    assert {'netlens/attribution/__init__.py', 'netlens/attribution/cam.py'} <= names   # the subpackage once left out
    assert sorted(n for n in names if n.startswith('netlens/') and n.endswith('.py')) == MODULES
    assert set(ASSETS) <= names
    meta = next(n for n in names if n.endswith('entry_points.txt'))
    with zipfile.ZipFile(dists[1]) as z: assert 'netlens = netlens.tour:main' in z.read(meta).decode()

def test_sdist_holds_every_module(dists):
    with tarfile.open(dists[0]) as t: names = {n.split('/', 1)[1] for n in t.getnames() if '/' in n}
    assert set(MODULES) | set(ASSETS) | {'pyproject.toml', 'README.md'} <= names

def test_tests_import_the_installed_package():
    "Under .ci/run (NETLENS_TEST_INSTALLED=1) netlens must come from the installed wheel, not from the checkout"
    import netlens
    where = Path(netlens.__file__).resolve()
    if os.environ.get('NETLENS_TEST_INSTALLED') == '1': assert ROOT not in where.parents, f"netlens imported from the checkout: {where}"
    assert (where.parent / 'attribution' / 'cam.py').exists() and (where.parent / 'assets' / 'digits_cnn.pt').exists()
