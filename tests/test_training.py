import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrisr.config import from_dict
from mrisr.degradation import kspace_lowpass_mask
from mrisr.degradation.kspace import centered_fft, centered_ifft
from mrisr.errors import ConfigError, MrisrError
from mrisr.evaluation import EvaluateConfig, evaluate
from mrisr.models import load_checkpoint
from mrisr.models.query import sample_grid
from mrisr.training import load_train_config, train
from mrisr.training.config import TrainConfig
from mrisr.training.losses import frequency_loss, sr_loss
from mrisr.training.slices import SlicePatchTask, SliceVolumes

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "dualarbnet", "args": {"G0": 8, "D": 1, "C": 2, "G": 8,
                                             "fusion_channels": 8, "fusion_convs": 1,
                                             "skip_hidden": 8, "attention_reduction": 4}}


def tiny_config(tmp_path, steps=(3, 3), **extra) -> TrainConfig:
    base = {
        "model": TINY_MODEL,
        "data": {"dataset": {"kind": "phantom", "shape": [64, 64, 12], "voxel_size": [2, 2, 4]},
                 "patch": 12},
        "curriculum": [{"name": "warmup", "steps": steps[0], "target_scales": [2, 3]},
                       {"name": "full", "steps": steps[1],
                        "reference": {"hr": 0.3, "lr": 0.3, "own": 0.4}}],
        "optim": {"batch_size": 2, "lr": 1e-3},
        "run": {"checkpoint_every": 3, "log_every": 1, "seed": 1, "threads": 1},
        "output": str(tmp_path / "run"),
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(TrainConfig, base)


def test_frequency_loss_masks_select_the_right_frequencies():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((1, 1, 32, 32)))
    k = centered_fft(target.to(torch.complex128), 2)
    known = kspace_lowpass_mask((32, 32), (16, 16))
    noise = torch.from_numpy(rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32)))
    low = centered_ifft(k + noise * known, 2)
    high = centered_ifft(k + noise * ~known, 2)
    # Perturbing only the frequencies the LR input holds: invisible to the "unseen" K-loss.
    assert frequency_loss(low, target, 2, (16, 16), "unseen") < 1e-2 * \
        frequency_loss(low, target, 2, (16, 16), "seen")
    assert frequency_loss(high, target, 2, (16, 16), "seen") < 1e-2 * \
        frequency_loss(high, target, 2, (16, 16), "unseen")
    assert frequency_loss(target, target, 2) == 0
    assert frequency_loss(high, target, 2, (16, 16), "unseen", "l2") > 0
    # At x1 the LR input holds every frequency: the unseen K-loss is zero, not NaN, and the
    # total loss still trains through the L1 part.
    pred = high.real.clone().requires_grad_(True)
    loss, parts = sr_loss(pred, target, 2, 0.05, (32, 32), "unseen")
    loss.backward()
    assert parts["kloss"] == 0 and torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_l2_pixel_loss_is_minimised_by_the_mean_and_l1_by_the_median():
    # Three equally likely truths for one pixel: 0, 0 and 1. L1 is lowest at their median (0),
    # the root mean square at their mean (1/3), which is what PSNR rewards.
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(3, 1, 1, 1)
    candidates = torch.linspace(0, 1, 31)

    def best(norm):
        losses = [float(sr_loss(torch.full_like(target, float(c)), target, 2,
                                pixel_norm=norm)[0]) for c in candidates]
        return float(candidates[int(np.argmin(losses))])
    assert best("l1") == 0.0
    assert abs(best("l2") - 1 / 3) < 0.02
    # The logged part stays the mean absolute difference whatever the objective.
    _, parts = sr_loss(torch.zeros_like(target), target, 2, pixel_norm="l2")
    assert parts["l1"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="pixel_norm"):
        sr_loss(target, target, 2, pixel_norm="l3")


def test_pixel_norm_is_a_checked_training_setting(tmp_path):
    cfg = tiny_config(tmp_path, steps=(1, 1), loss={"pixel_norm": "l2"})
    assert cfg.loss.pixel_norm == "l2"
    train(cfg, show_progress=False)
    payload = load_checkpoint(tmp_path / "run" / "final.pt").payload
    assert payload["train_config"]["loss"]["pixel_norm"] == "l2"
    with pytest.raises(ConfigError, match="pixel_norm"):
        tiny_config(tmp_path, loss={"pixel_norm": "huber"}).validate("x.yaml")


def test_batches_are_deterministic_aligned_and_scales_independent(tmp_path):
    cfg = tiny_config(tmp_path, steps=(2, 40))
    task = SlicePatchTask(cfg, SliceVolumes.load(cfg.data))
    a, b = task.batch(5), task.batch(5)
    for key in ("lr", "hr", "ref", "target_pos_0", "ref_pos_1"):
        torch.testing.assert_close(a[key], b[key])
    seen = set()
    for step in range(2, 42):
        batch = task.batch(step)
        seen.add(batch["ref_kind"])
        # The HR patch lies on the LR patch: linear upsampling at the query positions fits
        # best without a shift.
        errs = [float((sample_grid(batch["lr"].double(), [batch["target_pos_0"],
                                                         batch["target_pos_1"] + d],
                                   "linear") - batch["hr"]).abs().mean()) for d in (-1, 0, 1)]
        assert errs[1] < min(errs[0], errs[2])
        hr_size = batch["hr"].shape[-1]
        assert batch["ref_pos_0"].shape[-1] == hr_size
        np.testing.assert_allclose(batch["ref_spacing"][0].numpy(),
                                   1 / batch["ref_scale"], rtol=0.05)
    assert seen == {"hr", "lr", "own"}
    own = [task.batch(s) for s in range(2, 42)]
    own = [(b["scale"], b["ref_scale"]) for b in own if b["ref_kind"] == "own"]
    assert len({r for _, r in own}) > 1 and any(abs(s - r) > 0.5 for s, r in own)


@pytest.mark.parametrize("ema_decay", [0.0, 0.8])
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, ema_decay):
    optim = {"ema_decay": ema_decay}
    final_a = train(tiny_config(tmp_path / "a", steps=(3, 3), optim=optim), show_progress=False)
    interrupted = tiny_config(tmp_path / "b", steps=(3, 3), optim=optim)
    interrupted.run.max_minutes = 1e-9  # the budget is spent after the first step
    train(interrupted, show_progress=False)
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt").payload["step"] == 1
    final_b = train(tiny_config(tmp_path / "b", steps=(3, 3), optim=optim), resume="auto",
                    show_progress=False)
    a = load_checkpoint(final_a).model.state_dict()
    b = load_checkpoint(final_b).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    log_a = (tmp_path / "a" / "run" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in log_a] == [r.split(",")[:3] for r in log_b]


def test_a_resumed_run_needs_no_init_weights(tmp_path):
    """A fine-tuning run continued on a fresh machine: its model.init is gone, its last.pt is
    there, and it resumes from the latter."""
    import shutil

    init = tmp_path / "init.pt"
    shutil.copyfile(train(tiny_config(tmp_path / "a", steps=(1, 1)), show_progress=False), init)
    cfg = tiny_config(tmp_path / "b", steps=(3, 3))
    cfg.model.init = str(init)
    cfg.run.max_minutes = 1e-9
    train(cfg, show_progress=False)
    init.unlink()
    cfg.run.max_minutes = None
    final = train(cfg, resume="auto", show_progress=False)
    assert load_checkpoint(final).payload["step"] == 6
    fresh = tiny_config(tmp_path / "c", steps=(3, 3))
    fresh.model.init = str(init)
    with pytest.raises(MrisrError, match="init"):  # a new run still needs them
        train(fresh, show_progress=False)


def test_weight_average_is_what_final_checkpoint_holds(tmp_path):
    decay = 0.8
    final = train(tiny_config(tmp_path, steps=(2, 2), optim={"ema_decay": decay}),
                  show_progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    averaged = load_checkpoint(final).model.state_dict()
    raw = last["state_dict"]
    assert int(last["ema"]["n_averaged"]) == 4
    for key in raw:
        torch.testing.assert_close(averaged[key], last["ema"][f"module.{key}"], rtol=0, atol=0)
    # Four steps from the initial weights: the average lags the last iterate.
    moved = [key for key in raw if raw[key].is_floating_point() and
             not torch.equal(raw[key], averaged[key])]
    assert moved
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(tmp_path, optim={"ema_decay": 1.0}).validate("test")


def test_checkpoint_records_config_data_and_version(tmp_path):
    final = train(tiny_config(tmp_path, steps=(2, 1)), show_progress=False)
    payload = torch.load(final, weights_only=True)
    assert payload["step"] == 3 and "optimizer" not in payload
    assert payload["train_config"]["model"]["name"] == "dualarbnet"
    assert payload["data"]["slices"] > 0 and payload["data"]["dataset"] == "phantom"
    assert payload["code_version"].startswith(("0.", "1."))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "optimizer" in last


def test_trained_checkpoint_plugs_into_evaluate(tmp_path):
    final = train(tiny_config(tmp_path, steps=(2, 1)), show_progress=False)
    cfg = from_dict(EvaluateConfig, {
        "dataset": {"kind": "phantom", "shape": [48, 48, 8], "voxel_size": [2, 2, 4]},
        "max_slices": 1, "scales": [2, 3.5], "references": ["hr", "lr", "2.5"],
        "methods": [{"name": "model", "args": {"model": str(final)}, "label": "tiny"},
                    {"name": "cubic"}]})
    rows = evaluate(cfg, show_progress=False).rows
    assert {(r["method"], r["reference"]) for r in rows} == {
        ("tiny", "hr"), ("tiny", "lr"), ("tiny", "2.5"), ("cubic", "-")}
    assert all(np.isfinite(r["psnr"]) for r in rows)


def test_unknown_training_key_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load_train_config(path)
    path.write_text("curriculum: [{steps: 5, reference: {hd: 1}}]\n")
    with pytest.raises(ConfigError, match="unknown reference type"):
        load_train_config(path)


DDP_CONFIG = """
model: {model}
data:
  dataset: {{kind: phantom, shape: [64, 64, 12], voxel_size: [2, 2, 4]}}
  patch: 12
curriculum:
  - {{name: full, steps: 3, reference: {{hr: 0.5, own: 0.5}}}}
optim: {{batch_size: 4, lr: 0.001}}
run: {{checkpoint_every: 100, log_every: 1, seed: 3, threads: 1, precision: fp32}}
output: {output}
"""


def test_torchrun_two_gloo_ranks_match_one_process(tmp_path):
    # fp32: in bf16 the two batch splits round differently (oneDNN picks kernels by shape).
    import json
    model = json.dumps(TINY_MODEL)
    for name in ("single", "ddp"):
        (tmp_path / f"{name}.yaml").write_text(DDP_CONFIG.format(model=model,
                                                                 output=tmp_path / name))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mrisr = [sys.executable, "-m", "mrisr.cli.main", "train", "-q"]
    subprocess.run(mrisr + [str(tmp_path / "single.yaml")], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "mrisr.cli.main", "train", "-q",
                           str(tmp_path / "ddp.yaml")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = load_checkpoint(tmp_path / "single" / "final.pt").model.state_dict()
    ddp = load_checkpoint(tmp_path / "ddp" / "final.pt").model.state_dict()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
    # Rank 0 alone writes the log.
    assert len((tmp_path / "ddp" / "log.csv").read_text().splitlines()) == 4


def test_table2_runs_share_one_budget():
    """Every row of paper Table 2 changes the strategy or the model, never the budget."""
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "configs" / "table2"
    cfgs = {p.stem: load_train_config(p) for p in sorted(folder.glob("*.yaml"))}
    assert set(cfgs) == {"base", "hr_ref", "lr_ref", "random", "noref", "noscale", "nocoord"}
    base = cfgs["base"]
    assert [p.name for p in base.curriculum] == ["warmup", "prelearn", "full"]
    for name, cfg in cfgs.items():
        assert cfg.total_steps == base.total_steps == 1200, name
        assert cfg.optim == base.optim and cfg.run.seed == base.run.seed, name
    assert {cfgs[n].model.name for n in ("noref", "noscale", "nocoord")} == {
        "dualarbnet_s_noref", "dualarbnet_s_noscale", "dualarbnet_s_nocoord"}


def test_average_weights_script_averages_one_architecture(tmp_path):
    from mrisr.models import create_model
    from mrisr.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    nets = [create_model("liif", G0=8, D=1, C=2, G=8) for _ in range(2)]
    for k, net in enumerate(nets):
        save_checkpoint(tmp_path / f"{k}.pt", net, step=k)
    other = create_model("liif", G0=8, D=1, C=2, G=4)
    save_checkpoint(tmp_path / "other.pt", other)
    script = Path(__file__).resolve().parents[1] / "scripts" / "average_weights.py"

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)],
                              capture_output=True, text=True)

    done = run(tmp_path / "avg", tmp_path / "0.pt", tmp_path / "1.pt", "--weights", "0.25,0.75")
    assert done.returncode == 0, done.stderr
    loaded = load_checkpoint(tmp_path / "avg" / "final.pt")
    payload = torch.load(tmp_path / "avg" / "final.pt", weights_only=True)
    assert payload["step"] == 1 and len(payload["trainer"]["average_of"]) == 2
    for key, value in loaded.model.state_dict().items():
        expected = 0.25 * nets[0].state_dict()[key] + 0.75 * nets[1].state_dict()[key]
        torch.testing.assert_close(value, expected)
    refused = run(tmp_path / "bad", tmp_path / "0.pt", tmp_path / "other.pt")
    assert refused.returncode != 0 and "is not the model of" in refused.stderr
    assert not (tmp_path / "bad").exists()
