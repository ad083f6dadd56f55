"Bad requests to FlatModel and its recordings, moved from nbs/03_flat.ipynb: each raises an error that says what to do"
import pytest, torch, torch.nn as nn
from netlens.data import digits_cnn, digits_data
from netlens.flat import FlatModel

@pytest.fixture(scope='module')
def model(): return digits_cnn()

@pytest.fixture(scope='module')
def x(): return digits_data('test')[0][:8]

@pytest.fixture
def fm(model): return FlatModel(model)

def test_unknown_layers(fm):
    with pytest.raises(KeyError, match="closest: 'head'"): fm.resolve('haed')
    with pytest.raises(IndexError, match='has 19 layers'): fm[19]
    with pytest.raises(ValueError, match='no layers given'): fm.resolve([])
    with pytest.raises(KeyError, match='no layer of type LSTM'): fm.resolve(nn.LSTM)
    with pytest.raises(KeyError, match='not a submodule'): fm[nn.Linear(2, 2)]
    with pytest.raises(ValueError, match='calls count from 1'): fm['res.relu:0']
    with pytest.raises(KeyError, match='no submodules'): FlatModel(nn.Linear(3, 3))['weight']

def test_bad_models_and_patterns(fm):
    with pytest.raises(TypeError, match='got Tensor'): FlatModel(torch.ones(3))
    with pytest.raises(TypeError, match="FlatModel needs a torch.nn.Module as `model`, got function"): FlatModel(lambda x: x)
    for bad in ('', None): # '' matched every layer as a type pattern
        with pytest.raises(TypeError, match='got'): fm.resolve(bad)
    with pytest.raises(TypeError, match="find takes a module class"): fm.find(3)

def test_recorded_keys(fm, model, x):
    with fm.record(fm.layer_names) as rec: model(x)
    with pytest.raises(KeyError, match='there is no call 3'): rec['res.relu:3']
    with pytest.raises(KeyError, match="unknown recorded layer 'conv4'; closest: 'conv3', 'conv2'"): rec['conv4']

def test_bad_channels(fm, x):
    # channel indices are integers >= 0 (`check_index`, as everywhere)
    with pytest.raises(KeyError, match='there is no call 3'): fm.channel('res.relu:3', 0, x)
    with pytest.raises(IndexError, match='k -1 is out of range: channels count from 0'): fm.channel('res.relu', -1)   # count unknown: still not negative
    with pytest.raises(IndexError, match="k -1 is out of range: layer 'conv3' has 64 channels"): fm.channel('conv3', -1)
    with pytest.raises(TypeError, match='k must be an integer index, got 2.5'): fm.channel('conv3', 2.5)
