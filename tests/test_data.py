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


def test_accuracy_reads_unsized_loaders_and_restores_each_modules_mode():
    from torch.utils.data import DataLoader, IterableDataset
    from netlens.data import digits_data
    x, y = digits_data('test')
    class Stream(IterableDataset):
        def __iter__(self): return iter(zip(x, y))
    m = digits_cnn()
    acc = accuracy(m, digits_loader('test'))
    assert accuracy(m, DataLoader(Stream(), batch_size=50)) == acc == accuracy(m, ((x[i:i + 50], y[i:i + 50]) for i in range(0, 360, 50)))
    m.res.bn2.train()
    flags = [mod.training for mod in m.modules()]
    accuracy(m, digits_loader('test'))
    assert [mod.training for mod in m.modules()] == flags

def test_counts_are_checked():
    import pytest
    with pytest.raises(ValueError, match='epochs must be an integer >= 1, got 0'): train_digits_cnn(epochs=0)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): train_digits_cnn(batch_size=0)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): digits_loader(batch_size=0)
