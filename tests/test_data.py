"The embedded digits model: retrainable, deterministic, accurate"
import torch
from netlens.data import accuracy, digits_cnn, digits_loader, train_digits_cnn

def test_shipped_weights_are_accurate():
    assert accuracy(digits_cnn(), digits_loader('test')) >= 0.97

def test_training_is_deterministic_and_accurate():
    rng = torch.get_rng_state()
    a, b = train_digits_cnn(seed=0, show_progress=False), train_digits_cnn(seed=0, show_progress=False)
    assert torch.equal(torch.get_rng_state(), rng), "training leaves the caller's random stream alone"
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert accuracy(a, digits_loader('test')) >= 0.97
    c = train_digits_cnn(seed=1, show_progress=False)
    assert not torch.equal(a.conv3.weight, c.conv3.weight)
