"""captioner.training.scst: sampling, the masked REINFORCE loss and SCST raising CIDEr-D on toy tasks.

The toy models are trained by cross-entropy for only 2 epochs, so their samples still vary
and SCST has something to improve (the shared conftest toys are trained to convergence).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioner.model.build import build_attention_model, build_merge_model
from captioner.decoding.cider import CiderD
from captioner.training.scst import (
    CaptionReward,
    ScstConfig,
    ScstTrainer,
    caption_length,
    leave_one_out_mean,
    sequence_logprob,
    teacher_forcing,
)
from captioner.datasets.sequences import encode_captions
from captioner.datasets.text import END, PAD, START, UNK, build_vocabulary
from tests.helpers.toy import COLOURS, fit_toy

POOL = ("a {} thing", "the {} shape is here", "a {} shape")
N, REGIONS, CHANNELS = 240, 4, 8


def _toy(kind: str) -> dict:
    """A colour task (merge: one-hot feature; attention: the colour in one of 4 regions), three
    references per image, and a model trained 2 epochs by cross-entropy."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    cls = rng.integers(0, len(COLOURS), N)
    if kind == "merge":
        feats = np.eye(8, dtype=np.float32)[cls] + 0.05 * rng.standard_normal((N, 8)).astype(np.float32)
    else:
        grid = 0.05 * rng.standard_normal((N, REGIONS, CHANNELS)).astype(np.float32)
        where = rng.integers(0, REGIONS, N)
        grid[np.arange(N), where, cls] += 1.0
        grid[np.arange(N), where, 7] += 1.0
        feats = grid.reshape(N, -1).astype(np.float16)  # like a float16 grid file
    refs = [[p.format(COLOURS[c]).split() for p in POOL] for c in cls]
    caps = [f"{START} {POOL[i % 3].format(COLOURS[c])} {END}" for i, c in enumerate(cls)]
    vocab = build_vocabulary(caps, 1)

    def build() -> keras.Model:
        if kind == "merge":
            return build_merge_model(len(vocab), 8, 16, 32, 0.1)
        return build_attention_model(len(vocab), REGIONS, CHANNELS, 16, 32, 16, 0.1, 0.1)

    model = build()
    fit_toy(model, encode_captions(caps, vocab, 10), feats, epochs=2)
    return {"model": model, "build": build, "vocab": vocab, "feats": feats, "refs": refs,
            "reward": CaptionReward(CiderD(refs), refs, vocab)}


@pytest.fixture(scope="module")
def merge_toy() -> dict:
    return _toy("merge")


def _fresh(toy: dict) -> dict:
    """The toy with a copy of its model, for a test that trains it."""
    model = toy["build"]()
    model.set_weights(toy["model"].get_weights())
    return toy | {"model": model}


def _trainer(toy: dict, **config) -> ScstTrainer:
    settings = {"samples": 4, "max_length": 8, "learning_rate": 5e-3, "batch_size": 32, "seed": 0} | config
    return ScstTrainer(toy["model"], toy["vocab"], toy["reward"], ScstConfig(**settings))


def test_samples_are_well_formed_and_their_logprob_is_the_teacher_forcing_one(merge_toy: dict) -> None:
    trainer = _trainer(merge_toy)
    feats = merge_toy["feats"][:40]
    ids, logprob = trainer.sampler.sample(feats, 4)
    vocab = merge_toy["vocab"]
    end, banned = vocab.index[END], [vocab.index[t] for t in (START, UNK)]
    assert ids.shape[0] == 160 and ids.shape[1] <= 8 + 1
    lengths = caption_length(ids, end)
    assert len(set(lengths.tolist())) > 1  # real sampling: several lengths
    for row, n in zip(ids, lengths):
        assert 0 not in row[:n] and not set(row[:n].tolist()) & set(banned)
        assert (row[n + 1 :] == 0).all() and row[n] in (end, 0)
    assert len({tuple(r) for r in ids.tolist()}) > 10  # not one caption repeated
    inputs, targets = teacher_forcing(ids, vocab.index[START])
    tf_logprob = sequence_logprob(trainer.model, np.repeat(feats.astype(np.float32), 4, 0), inputs, targets,
                                  trainer._banned).numpy()
    np.testing.assert_allclose(tf_logprob, logprob, rtol=0, atol=1e-4)
    greedy, _ = trainer.sampler.greedy(feats)
    assert greedy.shape[0] == 40


def test_loss_ignores_padding(merge_toy: dict) -> None:
    trainer = _trainer(merge_toy)
    feats = merge_toy["feats"][:16]
    ids, _ = trainer.sampler.sample(feats, 4)
    inputs, targets = teacher_forcing(ids, merge_toy["vocab"].index[START])
    assert (targets == 0).any()  # some captions are padded in this batch
    f = np.repeat(feats, 4, axis=0)
    adv = np.linspace(-1, 1, len(ids)).astype(np.float32)
    loss = float(trainer.loss(f, inputs, targets, adv))
    pad = np.zeros((len(ids), 3), np.int32)
    padded = float(trainer.loss(f, np.concatenate([inputs, pad], 1), np.concatenate([targets, pad], 1), adv))
    assert abs(loss - padded) < 1e-5 and loss != 0.0
    # inputs whose target is padding (endseq, padding) predict nothing that counts: words there change nothing
    junk = np.where(targets == 0, merge_toy["vocab"].index["red"], inputs).astype(np.int32)
    assert (junk != inputs).any() and PAD == merge_toy["vocab"].tokens[0]
    assert abs(float(trainer.loss(f, junk, targets, adv)) - loss) < 1e-5


def test_leave_one_out_baseline() -> None:
    np.testing.assert_allclose(leave_one_out_mean(np.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3),
                               [4.0, 3.5, 1.5, 1.5, 1.5, 0.0])


@pytest.mark.parametrize(("kind", "baseline"), [("merge", "mean"), ("attention", "greedy")])
def test_scst_raises_the_reward_on_a_toy_task(kind: str, baseline: str, merge_toy: dict) -> None:
    toy = _fresh(merge_toy) if kind == "merge" else _toy(kind)
    trainer = _trainer(toy, baseline=baseline)
    before = trainer.mean_reward(toy["feats"], greedy=False)
    first = trainer.epoch(toy["feats"], progress=False)
    second = trainer.epoch(toy["feats"], progress=False)
    after = trainer.mean_reward(toy["feats"], greedy=False)
    assert first.steps == second.steps == 8 and second.seconds > 0
    print(f"\nSCST {kind}/{baseline}: sampled reward {before:.3f} -> {after:.3f}")
    assert after > before + 0.8, (before, after)  # measured: merge 1.86 -> 4.05, attention 0.69 -> 1.83
    assert second.reward > first.reward
    # other references (e.g. dev's) whose images are rows of a bigger feature matrix: the same captions
    held = np.arange(N - 40, N)
    dev = CaptionReward(CiderD([toy["refs"][i] for i in held]), [toy["refs"][i] for i in held], toy["vocab"])
    by_rows = trainer.mean_reward(toy["feats"], held, reward=dev)
    assert by_rows > 0 and by_rows == trainer.mean_reward(toy["feats"][held], reward=dev)
    with pytest.raises(ValueError, match="39 feature rows for the 40 images"):
        trainer.mean_reward(toy["feats"], held[1:], reward=dev)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="'mean' or 'greedy'"):
        ScstConfig(baseline="max")
    with pytest.raises(ValueError, match="samples must be >= 2"):
        ScstConfig(samples=1)
    ScstConfig(samples=1, baseline="greedy")
    with pytest.raises(ValueError, match="learning_rate"):
        ScstConfig(learning_rate=0.0)


def test_reward_reads_words_up_to_endseq(merge_toy: dict) -> None:
    vocab, reward = merge_toy["vocab"], merge_toy["reward"]
    ref = merge_toy["refs"][0][0]  # e.g. "a red thing"
    good = [vocab.index[w] for w in ref] + [vocab.index[END], vocab.index["shape"], 0]
    cut = good[: len(ref)] + [0, 0, 0]
    got = reward(np.array([good, cut]), np.array([0, 0]))
    assert got[0] == got[1] > 1.0
    assert tf.is_tensor(tf.constant(got)) and got.dtype == np.float64


def test_epoch_reads_each_image_from_its_feature_row(merge_toy: dict) -> None:
    """Features given as rows of a bigger, reordered matrix train exactly as the aligned ones."""
    perm = np.random.default_rng(1).permutation(N + 7)[:N]  # image i at row perm[i]
    shuffled = np.zeros((N + 7, merge_toy["feats"].shape[1]), np.float32)
    shuffled[perm] = merge_toy["feats"]
    aligned = _trainer(_fresh(merge_toy)).epoch(merge_toy["feats"], progress=False)
    by_rows = _trainer(_fresh(merge_toy)).epoch(shuffled, perm, progress=False)
    assert by_rows.reward == pytest.approx(aligned.reward, abs=1e-9) and by_rows.steps == aligned.steps


def test_finetune_keeps_the_ensembles_best_dev_epoch_and_stops(merge_toy: dict) -> None:
    """`finetune` on a 2-member ensemble: a greedy history per member and the ensemble's dev
    CIDEr-D by epoch (0 = the cross-entropy models); the members end with the weights of the
    ensemble's best epoch, and training stops once `patience` epochs bring nothing better. With
    a learning rate this large later epochs get worse, so keeping the last epoch (or running to
    the cap) fails this test."""
    from captioner.config.decoding import DecodingConfig
    from captioner.training.scst import ensemble_dev_cider, finetune, references_by_row

    members = [_fresh(merge_toy)["model"] for _ in range(2)]
    ids = [f"img{i}" for i in range(N)]
    refs, rows = references_by_row(
        [i for i in ids for _ in POOL], [f"{START} {' '.join(r)} {END}" for rs in merge_toy["refs"] for r in rs],
        list(reversed(ids)))  # feature rows need not be in image order
    feats = merge_toy["feats"][::-1]
    assert refs == merge_toy["refs"] and rows.tolist() == list(range(N - 1, -1, -1))
    train, dev = (refs[:160], rows[:160]), (refs[160:], rows[160:])
    config = ScstConfig(samples=4, max_length=8, learning_rate=0.3, batch_size=32, seed=0)
    select = DecodingConfig(beam_width=2)
    result = finetune(members, feats, train, dev, merge_toy["vocab"], config, epochs=6, select=select, patience=2,
                      progress=False, log=lambda _: None)
    assert [h["member"] for h in result["members"]] == [0, 1]
    scores = [e["dev_cider"] for e in result["ensemble"]]
    best = int(np.argmax(scores))
    assert result["best_epoch"] == best and [e["epoch"] for e in result["ensemble"]] == list(range(len(scores)))
    assert result["epochs_run"] == len(scores) - 1 == min(6, best + 2)  # stopped 2 epochs after the best
    assert result["epochs_run"] < 6 and scores[-1] < max(scores)  # it stopped, and restoring mattered
    for h in result["members"]:
        assert [e["epoch"] for e in h["epochs"]] == list(range(len(scores)))
    dev_reward = CaptionReward(CiderD(dev[0]), dev[0], merge_toy["vocab"])
    again = ensemble_dev_cider(members, feats, dev[1], dev_reward, merge_toy["vocab"], select)
    assert again == pytest.approx(max(scores), abs=1e-4)  # the best epoch's weights


@pytest.mark.parametrize("stop_member", [0, 1])
def test_finetune_interrupted_mid_epoch_resumes_bit_for_bit(merge_toy: dict, tmp_path, stop_member: int) -> None:
    """`finetune` with checkpoints, interrupted while a member runs its second epoch, and run
    again, ends with the uninterrupted run's weights and histories; a run killed after the end
    is not trained again."""
    from captioner.training.checkpoint import CheckpointFolder
    from captioner.training.scst import finetune

    train, dev = (merge_toy["refs"][:160], np.arange(160)), (merge_toy["refs"][160:], np.arange(160, N))
    config = ScstConfig(samples=4, max_length=8, learning_rate=0.05, batch_size=32, seed=0)

    def run(log, folder=None):
        keras.utils.set_random_seed(1)  # the same dropout generators' seeds in every run
        members = [_fresh(merge_toy)["model"] for _ in range(2)]
        return members, finetune(members, merge_toy["feats"], train, dev, merge_toy["vocab"], config, epochs=3,
                                 patience=3, progress=False, log=log, checkpoints=folder)

    plain_members, plain = run(lambda _: None)

    class Interrupt(Exception):
        pass

    def stop(line: str) -> None:
        if line.startswith(f"scst: member {stop_member} epoch 2/3"):
            raise Interrupt(line)  # epoch 2 ran for this member, no checkpoint of epoch 2 is written yet

    folder = CheckpointFolder.open(tmp_path / "ck", "scst", {"params": {"scst": 1}})
    with pytest.raises(Interrupt):
        run(stop, folder)
    assert [folder.load(m).epoch for m in (0, 1)] == [1, 1]
    lines: list[str] = []
    members, result = run(lines.append, folder)

    def timeless(r):  # wall-clock seconds differ between any two runs
        return {**r, "members": [{**h, "epochs": [{k: v for k, v in e.items() if k != "seconds"} for e in h["epochs"]]}
                                 for h in r["members"]]}

    assert timeless(result) == timeless(plain)
    assert "scst: resumes at epoch 2 of 3" in lines
    for a, b in zip(members, plain_members):
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert all(folder.load(m).done for m in (0, 1))
    lines.clear()
    members, again = run(lines.append, folder)  # killed after the end: nothing is trained again
    assert timeless(again) == timeless(plain) and lines == ["scst: finished before (best epoch "
                                                            f"{plain['best_epoch']})"]
    for a, b in zip(members, plain_members):
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_finetune_killed_between_two_members_checkpoints_of_the_first_epoch_resumes_bit_for_bit(
        merge_toy: dict, tmp_path) -> None:
    """Killed after member 0's first checkpoint was written but before member 1's: the run
    resumes with member 0 at epoch 1 and member 1 from scratch, and ends as the uninterrupted run."""
    from captioner.training.checkpoint import CheckpointFolder
    from captioner.training.scst import finetune

    train, dev = (merge_toy["refs"][:160], np.arange(160)), (merge_toy["refs"][160:], np.arange(160, N))
    config = ScstConfig(samples=4, max_length=8, learning_rate=0.05, batch_size=32, seed=0)

    def run(folder=None):
        keras.utils.set_random_seed(1)
        members = [_fresh(merge_toy)["model"] for _ in range(2)]
        return members, finetune(members, merge_toy["feats"], train, dev, merge_toy["vocab"], config, epochs=2,
                                 patience=2, progress=False, log=lambda _: None, checkpoints=folder)

    plain_members, plain = run()

    class Killed(Exception):
        pass

    class KilledAtMember1(CheckpointFolder):
        def save(self, member, state):
            if member == 1:
                raise Killed()
            super().save(member, state)

    folder = CheckpointFolder.open(tmp_path / "ck", "scst", {"params": {"scst": 2}})
    with pytest.raises(Killed):
        run(KilledAtMember1(folder.root, folder.stage))
    assert folder.load(0).epoch == 1 and folder.load(1) is None
    members, result = run(folder)
    strip = lambda r: {**r, "members": [{**h, "epochs": [{k: v for k, v in e.items() if k != "seconds"}  # noqa: E731
                                                         for e in h["epochs"]]} for h in r["members"]]}
    assert strip(result) == strip(plain)
    for a, b in zip(members, plain_members):
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
