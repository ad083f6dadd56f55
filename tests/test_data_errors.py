"Bad inputs to netlens.data, moved from nbs/01_data.ipynb: each raises a clear error"
import pytest
from netlens.data import accuracy, digits_cnn, digits_loader, train_digits_cnn

def test_accuracy_of_an_empty_loader():
    with pytest.raises(ValueError, match='no examples'): accuracy(digits_cnn(), [])

def test_counts_must_be_positive():
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): digits_loader('test', batch_size=0)
    with pytest.raises(ValueError, match='epochs must be an integer >= 1, got 0'): train_digits_cnn(epochs=0)
