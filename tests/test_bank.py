"""The augmented bank on disk (metaaug.bank): the same bytes as the all-in-memory path it replaced,
digested as written, read back memory-mapped with the values a float bank held."""

import numpy as np
import pytest
import torch

from metaaug.arms import bank_augment, load_bank
from metaaug.bank import Bank, npy_header, write_bank
from metaaug.errors import MetaaugError
from metaaug.policies import fixed_policy, sample_apply
from metaaug.files import dir_digest
from metaaug.training import to_tensor


def all_in_memory(policy, x, copies, seed):
    """The augment stage before metaaug.bank: every float copy stacked, then one uint8 array."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.stack([sample_apply(policy, x, gen).clamp_(0, 1) for _ in range(copies)])
    return (bank * 255).round_().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


@pytest.mark.parametrize("channels", [1, 3])
def test_bank_is_byte_identical_to_the_all_in_memory_path(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 9, 9, channels), dtype=np.uint8)
    policy = fixed_policy("randaugment", image_channels=channels)
    x = to_tensor(images)
    np.save(tmp_path / "old.npy", all_in_memory(policy, x, 5, 3), allow_pickle=False)
    digest = write_bank(tmp_path / "images.npy", policy, x, 5, torch.Generator().manual_seed(3))
    assert (tmp_path / "images.npy").read_bytes() == (tmp_path / "old.npy").read_bytes()
    assert digest == dir_digest(tmp_path / "images.npy")


@pytest.mark.parametrize("shape", [(3, 4, 5, 5, 1), (0, 2, 8, 8, 3)])
def test_header_is_the_one_np_save_writes(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.uint8))
    data = (tmp_path / "a.npy").read_bytes()
    assert data[:len(npy_header(shape))] == npy_header(shape)
    assert len(data) == len(npy_header(shape)) + int(np.prod(shape))


def test_bank_draws_the_float_values_of_the_rows_asked_for(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
    write_bank(tmp_path / "images.npy", fixed_policy("trivialaugment"), to_tensor(images), 3,
               torch.Generator().manual_seed(0))
    np.save(tmp_path / "index.npy", np.array([10, 11, 12, 13]))
    stored = np.load(tmp_path / "images.npy")
    bank, index = load_bank(tmp_path)
    k, j = np.array([2, 0, 1]), np.array([3, 3, 0])
    assert torch.equal(bank.rows(k, j), to_tensor(stored[k, j]))
    # the learned arm: batch row r is support image r % len(support), copy drawn from the generator
    draw = bank_augment(bank, index, np.array([13, 10]))
    out = draw(torch.zeros(4, 1, 6, 6), torch.Generator().manual_seed(5))
    which = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(5)).numpy()
    assert torch.equal(out, to_tensor(stored[which, [3, 0, 3, 0]]))


def test_a_missing_or_foreign_bank_is_one_line(tmp_path):
    with pytest.raises(MetaaugError, match="images.npy missing"):
        Bank(tmp_path)
    np.save(tmp_path / "images.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(MetaaugError, match="expected uint8"):
        Bank(tmp_path)
