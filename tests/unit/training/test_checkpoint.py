"""Resumable training (captioner.training.checkpoint): a member interrupted after any epoch and
trained again from its checkpoint ends with the uninterrupted member's weights and history, bit
for bit; a finished member is rebuilt, not retrained; a changed fingerprint discards the folder."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from captioner.training.batches import EpochShuffle, make_dataset
from captioner.training.checkpoint import CheckpointFolder, fingerprint
from captioner.training.fit import MemberJob, TrainData, train_member
from tests.helpers.toy import make_toy


class Interrupt(Exception):
    pass


class StopAt(keras.callbacks.Callback):
    """Raises when epoch `epoch` (0-based) begins: the checkpoints of the epochs before it are written."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt(epoch)


@pytest.fixture(scope="module")
def toy():
    return make_toy()


def _job(toy, folder, **kw) -> MemberJob:
    from captioner.model.build import build_merge_model

    build = functools.partial(build_merge_model, len(toy["vocab"]), 8, 16, 32, 0.3)
    base = dict(member=1, seed=5, build=build, learning_rate=3e-3, batch_size=16, bucket_width=2, epochs=7,
                patience=2, lr_factor=0.5, lr_patience=1, checkpoints=str(folder) if folder else "")
    return MemberJob(**{**base, **kw})


def _data(toy) -> TrainData:
    rows = np.arange(len(toy["ids"]))
    half = len(rows) // 2  # dev differs from train, so early stopping and the plateau have work
    return TrainData(toy["ids"][:half], rows[:half], toy["ids"][half:], rows[half:], toy["feats"])


def _open(tmp_path, stamp=None):
    return CheckpointFolder.open(tmp_path / "ck", "train", stamp or {"params": {"epochs": 7}})


@pytest.mark.parametrize(("stop_at", "precision"), [(1, "float32"), (4, "float32"), (2, "mixed_bfloat16")])
def test_interrupted_fit_resumes_bit_for_bit(toy, tmp_path, stop_at, precision):
    """Also in mixed precision, where the member returned (and saved when done) is a float32 copy."""
    data = _data(toy)
    plain_model, plain = train_member(_job(toy, None, precision=precision), data, verbose=0)

    folder = _open(tmp_path)
    with pytest.raises(Interrupt):
        train_member(_job(toy, folder.root, precision=precision), data, [StopAt(stop_at)], verbose=0)
    state = folder.load(1)
    assert state is not None and state.epoch == stop_at and not state.done
    seen = []

    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, logs["loss"]))

    model, result = train_member(_job(toy, folder.root, precision=precision), data, [Seen()], verbose=0)
    assert result.history == plain.history and result.best_epoch == plain.best_epoch
    # the replayed epochs with their recorded losses, then the trained ones
    assert seen == list(enumerate(plain.history["loss"]))
    for a, b in zip(model.get_weights(), plain_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert folder.load(1).done
    again, _ = train_member(_job(toy, folder.root, precision=precision), data, verbose=0)  # rebuilt when done
    for a, b in zip(again.get_weights(), plain_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_finished_member_is_rebuilt_not_retrained(toy, tmp_path):
    data = _data(toy)
    folder = _open(tmp_path)
    first, result = train_member(_job(toy, folder.root), data, verbose=0)

    class Trained(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise AssertionError("a finished member was trained again")

    again, again_result = train_member(_job(toy, folder.root), data, verbose=0)
    assert again_result == result
    for a, b in zip(again.variables, first.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_other_fingerprint_discards_the_checkpoints(tmp_path):
    lines = []
    folder = CheckpointFolder.open(tmp_path / "ck", "train", {"params": {"train": {"epochs": 7}}})
    folder.path(0).write_bytes(b"x")
    CheckpointFolder.open(tmp_path / "ck", "train", {"params": {"train": {"epochs": 7}}}, log=lines.append)
    assert folder.path(0).exists() and not lines  # same fingerprint: kept
    CheckpointFolder.open(tmp_path / "ck", "train", {"params": {"train": {"epochs": 8}}}, log=lines.append)
    assert not folder.path(0).exists()
    assert lines == [f"train: discarding the checkpoints in {tmp_path / 'ck'}, made with another params.train.epochs"]


def test_damaged_checkpoint_is_an_error_naming_it(tmp_path):
    folder = _open(tmp_path)
    folder.path(0).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"member-0\.npz: unreadable checkpoint"):
        folder.load(0)


def test_fingerprint_names_inputs_and_code(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1")
    one = fingerprint({"x": 1}, {"a": f})
    f.write_bytes(b"2")
    two = fingerprint({"x": 1}, {"a": f})
    assert one["inputs"] != two["inputs"] and one["code"] == two["code"] and one["params"] == {"x": 1}


def test_epoch_shuffle_survives_peeks_and_resumes():
    """Epoch k draws the k-th shuffle however often a pass starts, and a resumed shuffle continues it."""
    ids = np.tile(np.arange(1, 9), (40, 1))
    ids[:, 5:] *= np.arange(40)[:, None] % 2  # two lengths, two buckets
    feats = np.eye(40, dtype=np.float32)
    shuffle = EpochShuffle(3)
    ds = make_dataset(ids, np.arange(40), feats, 8, 2, shuffle)
    next(iter(ds))  # an abandoned peek
    epochs = [[b[0][0].numpy().argmax(1).tolist() for b in ds] for _ in range(3)]
    assert epochs[0] != epochs[1]
    again = EpochShuffle(3)
    again.resume(2, shuffle.state_after(1))
    ds2 = make_dataset(ids, np.arange(40), feats, 8, 2, again)
    assert [b[0][0].numpy().argmax(1).tolist() for b in ds2] == epochs[2]


def test_a_member_killed_after_early_stopping_resumes_to_its_best_epoch(toy, tmp_path):
    """Killed between early stopping's last epoch and the member's final save: the rerun trains
    no epoch and ends with the uninterrupted member's best weights."""

    class DieAtEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise Interrupt("after the last epoch's checkpoint")

    data = _data(toy)
    job = dict(epochs=30, patience=1, lr_factor=1.0, learning_rate=3e-2)
    plain_model, plain = train_member(_job(toy, None, **job), data, verbose=0)
    assert plain.epochs_run < 30  # early stopping did stop it
    folder = _open(tmp_path)
    with pytest.raises(Interrupt):
        train_member(_job(toy, folder.root, **job), data, [DieAtEnd()], verbose=0)
    state = folder.load(1)
    assert state.meta["stop_training"] and not state.done and state.epoch == plain.epochs_run
    model, result = train_member(_job(toy, folder.root, **job), data, verbose=0)
    assert result == plain
    for a, b in zip(model.get_weights(), plain_model.get_weights()):
        np.testing.assert_array_equal(a, b)
