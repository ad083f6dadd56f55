"netlens.trace's bad-input errors (moved from nbs/12_trace.ipynb): a lookup or a `layers_to_save` key that names nothing says why"
import re
import pytest, torch
from netlens.data import digits_cnn, digits_data
from netlens.trace import log_forward_pass

@pytest.fixture(scope='module')
def digits():
    "The notebook's digits model, two test images and their full log"
    model, x = digits_cnn(), digits_data('test')[0][:2]
    return model, x, log_forward_pass(model, x)

def test_unknown_label_lists_the_closest(digits):
    with pytest.raises(Exception, match='closest'): digits[2]['conv2d_9']

def test_position_out_of_range(digits):
    with pytest.raises(Exception, match='out of range'): digits[2][99]

def test_negative_position_refused(digits):
    model, x, _ = digits
    with pytest.raises(Exception, match='negative'): log_forward_pass(model, x, layers_to_save=[-1])

def test_position_past_the_last_op(digits):
    model, x, log = digits
    with pytest.raises(IndexError, match=re.escape(f'position 9999 is out of range: the pass logged {len(log)} ops')):
        log_forward_pass(model, x, layers_to_save=[9999])

def test_module_call_that_did_not_happen(digits):
    model, x, _ = digits
    with pytest.raises(KeyError, match=re.escape("module 'res.relu' ran 2 time(s): there is no call 3")):
        log_forward_pass(model, x, layers_to_save=['res.relu:3'])

# every form of layers_to_save either saves something or says why (each of these saved nothing, silently)
@pytest.mark.parametrize('keys, err, msg', [(['stem.0:2'], KeyError, "ran 1 time(s): there is no call 2 (ask for 'stem.0')"),
                                            (['res.relu:0'], ValueError, 'count from 1'),
                                            (['conv2d_1:2'], KeyError, 'there is no pass 2'),
                                            ([''], ValueError, "pass 'all'"),
                                            (['relu:2'], KeyError, 'there is no pass 2')])
def test_layers_to_save_that_saves_nothing(digits, keys, err, msg):
    model, x, _ = digits
    with pytest.raises(err, match=re.escape(msg)): log_forward_pass(model, x, layers_to_save=keys)
