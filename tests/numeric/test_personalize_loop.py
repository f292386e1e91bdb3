"""The training loop on a small seeded problem: exact resume, NaN stop, fingerprint checks, safe files."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.errors import Interrupted, TrainingError
from dreamedit3d_core.personalize.train import (
    CheckpointPolicy,
    StepOutput,
    finished_checkpoint,
    latest_checkpoint,
    read_checkpoint,
    run_training,
)
from dreamedit3d_core.progress import CallbackProgress

pytestmark = pytest.mark.numeric

FP = {"model_hash": "m1", "components": ["hat", "dog"], "phase": "toy"}


def _problem(seed=0, nan_at=None):
    """A noisy regression whose every step draws from the run's generator (like the real phases)."""
    torch.manual_seed(123)
    w = torch.nn.Parameter(torch.randn(3, 5))
    target = torch.randn(3, 5)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([w], lr=5e-2, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    def step_fn(step):
        x = torch.randn(4, 3, generator=g)
        k = int(torch.randint(1, 3, (1,), generator=g))
        loss = ((x @ w)[:, :k + 2] - (x @ target)[:, :k + 2]).pow(2).mean()
        if nan_at is not None and step + 1 == nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"k": k})

    return w, opt, g, step_fn


def _stop_after(n):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > n

    return CallbackProgress(should_stop=should_stop)


def test_a_resumed_run_reaches_the_same_parameters_bit_for_bit(tmp_path):
    w, opt, g, step_fn = _problem()
    full = run_training(step_fn, {"w": w}, opt, 12, g, FP)
    w_full = w.detach().clone()

    w2, opt2, g2, step_fn2 = _problem()
    policy = CheckpointPolicy(directory=tmp_path, every=4, prefix="toy")
    with pytest.raises(Interrupted):
        run_training(step_fn2, {"w": w2}, opt2, 12, g2, FP, progress=_stop_after(7), checkpoint=policy)
    ckpt = latest_checkpoint(tmp_path, "toy")
    assert ckpt is not None and ckpt.name == "toy-step000007.pt"  # saved on interruption, the step-4 file replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-step000007.pt"]

    w3, opt3, g3, step_fn3 = _problem(seed=999)  # a fresh process: the generator state comes from the file
    resumed = run_training(step_fn3, {"w": w3}, opt3, 12, g3, FP, resume_from=ckpt, checkpoint=policy)
    assert torch.equal(w3.detach(), w_full)
    assert resumed.losses == full.losses
    assert resumed.steps_done == 12


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_state(tmp_path):
    w, opt, g, step_fn = _problem(nan_at=6)
    policy = CheckpointPolicy(directory=tmp_path, every=2, prefix="toy")
    with pytest.raises(TrainingError, match=r"loss became nan at step 6 of 10.*step 5\) is saved in .*toy-step000005\.pt"):
        run_training(step_fn, {"w": w}, opt, 10, g, FP, checkpoint=policy)
    assert torch.isfinite(w).all()
    state = read_checkpoint(tmp_path / "toy-step000005.pt")
    assert state["step"] == 5 and torch.equal(state["params"]["w"], w.detach())
    # the NaN step changed nothing: the good state equals a clean run's step 5
    w_ref, opt_ref, g_ref, step_ref = _problem()
    run_training(step_ref, {"w": w_ref}, opt_ref, 5, g_ref, FP)
    assert torch.equal(w_ref.detach(), w.detach())


def test_a_resume_file_from_another_model_or_component_set_is_refused(tmp_path):
    w, opt, g, step_fn = _problem()
    policy = CheckpointPolicy(directory=tmp_path, every=2, prefix="toy", keep_final=True)
    done = run_training(step_fn, {"w": w}, opt, 2, g, FP, checkpoint=policy)
    other = dict(FP, model_hash="m2", components=["hat", "cat"])
    w2, opt2, g2, step_fn2 = _problem()
    before = w2.detach().clone()
    with pytest.raises(TrainingError, match=r"belongs to another run \(model_hash: file has 'm1', this run has 'm2'; "
                                            r"components: file has \['hat', 'dog'\]"):
        run_training(step_fn2, {"w": w2}, opt2, 4, g2, other, resume_from=done.last_checkpoint)
    assert torch.equal(w2.detach(), before)
    junk = tmp_path / "junk.pt"
    torch.save({"hello": torch.zeros(1)}, junk)
    with pytest.raises(TrainingError, match="not a DreamEdit3D training state"):
        run_training(step_fn2, {"w": w2}, opt2, 4, g2, FP, resume_from=junk)


def test_checkpoints_never_replace_a_file_that_was_there(tmp_path):
    (tmp_path / "toy-step000002.pt").write_bytes(b"someone else's file")
    w, opt, g, step_fn = _problem()
    policy = CheckpointPolicy(directory=tmp_path, every=2, prefix="toy")
    with pytest.raises(Interrupted):
        run_training(step_fn, {"w": w}, opt, 6, g, FP, progress=_stop_after(3), checkpoint=policy)
    assert (tmp_path / "toy-step000002.pt").read_bytes() == b"someone else's file"
    assert read_checkpoint(tmp_path / "toy-step000003.pt")["step"] == 3


def test_progress_reports_every_step_with_the_loss():
    seen = []
    w, opt, g, step_fn = _problem()
    run_training(step_fn, {"w": w}, opt, 3, g, FP,
                 progress=CallbackProgress(on_update=lambda s, t, p, info: seen.append((s, t, info["loss"], info["k"]))))
    assert [s for s, *_ in seen] == [1, 2, 3] and all(t == 3 for _, t, *_ in seen)


def test_a_finished_run_keeps_its_final_state_until_released(tmp_path):
    """The crash window of issue 17: between the end of a run and the caller saving what it learned, the state file
    is the only copy on disk. It must hold the final parameters, resume to the same result without another step, and
    go away only on release()."""
    w, opt, g, step_fn = _problem()
    policy = CheckpointPolicy(directory=tmp_path, every=4, prefix="toy")
    done = run_training(step_fn, {"w": w}, opt, 10, g, FP, checkpoint=policy)
    assert done.last_checkpoint == tmp_path / "toy-step000010-done.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-step000010-done.pt"]  # the step-8 state was replaced
    assert latest_checkpoint(tmp_path, "toy") is None  # a finished run is not offered for resuming...
    assert finished_checkpoint(tmp_path, "toy") == done.last_checkpoint  # ...but its result is there to recover
    state = read_checkpoint(done.last_checkpoint)
    assert state["step"] == 10 and torch.equal(state["params"]["w"], w.detach())

    # "crash": the caller never saved w. A new process resumes from the kept file and gets the result at once.
    w2, opt2, g2, _ = _problem(seed=5)
    calls = []
    again = run_training(lambda step: calls.append(step), {"w": w2}, opt2, 10, g2, FP,
                         resume_from=done.last_checkpoint, checkpoint=policy)
    assert calls == [] and torch.equal(w2.detach(), w.detach()) and again.losses == done.losses
    assert again.last_checkpoint == done.last_checkpoint

    again.release()
    assert list(tmp_path.iterdir()) == [] and again.last_checkpoint is None
    again.release()  # idempotent
    w3, opt3, g3, step_fn3 = _problem()
    kept = run_training(step_fn3, {"w": w3}, opt3, 2, g3, FP,
                        checkpoint=CheckpointPolicy(directory=tmp_path, every=0, prefix="kept", keep_final=True))
    kept.release()  # keep_final: release leaves the file
    assert [p.name for p in tmp_path.iterdir()] == ["kept-step000002-done.pt"]


def test_a_new_finished_run_replaces_the_kept_result_of_the_previous_one(tmp_path):
    policy = CheckpointPolicy(directory=tmp_path, every=0, prefix="toy")
    (tmp_path / "other-step000003-done.pt").write_bytes(b"another prefix: not ours to touch")
    for steps in (3, 2):
        w, opt, g, step_fn = _problem()
        last = run_training(step_fn, {"w": w}, opt, steps, g, FP, checkpoint=policy).last_checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-step000003-done.pt", "toy-step000002-done.pt"]
    assert read_checkpoint(last)["step"] == 2


def test_default_progress_is_a_tqdm_bar_and_a_callers_hook_silences_it(capsys):
    w, opt, g, step_fn = _problem()
    run_training(step_fn, {"w": w}, opt, 3, g, FP, description="toy phase")
    err = capsys.readouterr().err
    assert "toy phase" in err and "3/3" in err and "loss=" in err and "step/s" in err
    w, opt, g, step_fn = _problem()
    run_training(step_fn, {"w": w}, opt, 3, g, FP, progress=CallbackProgress())
    assert capsys.readouterr().err == ""
