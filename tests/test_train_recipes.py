"""``segany train`` against bad recipes, earlier runs, bad resume files and diverging losses (the
train cases of the reliability audit): a clear one-line refusal naming the setting, exit 2, and
nothing written or overwritten."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segany.cli.main import main
from segany.train.config import ConfigError, load_config
from segany.train.data import CachedImage, build_cache, read_cache, write_cache
from segany.train.loop import TrainingDiverged, train
from segany.train.state import TrainingStateError, load_training_state


def _recipe(tmp_path: Path, data: Path, extra: str = "") -> Path:
    text = f"""
[model]
preset = "tiny"
[data]
datasets = ["{data / 'SUIM_sample'}"]
masks_per_image = 2
limit_per_dataset = 2
cache_dir = "{tmp_path / 'cache'}"
[optim]
lr = 1e-3
warmup_steps = 1
[loop]
steps = 2
global_batch = 1
num_rounds = 2
threads = 1
log_every = 1
checkpoint_every = 1
{extra}
"""
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-0.001", "optim.lr"),  # T04
        ('optim.lr="fast"', "optim.lr"),  # T06
        ("loop.steps=0", "loop.steps"),  # T11
        ("loop.steps=-5", "loop.steps"),  # T12
        ("loop.global_batch=0", "loop.global_batch"),  # T13
        ("data.masks_per_image=0", "data.masks_per_image"),  # T14
        ("loop.steps=abc", "loop.steps"),  # T15
        ("optim.lr=nan", "optim.lr"),  # T16
        ("loop.num_rounds=0", "loop.num_rounds"),  # T22
        ("loop.min_rounds=5", "loop.min_rounds"),  # more than num_rounds
        ("loop.box_probability=1.5", "loop.box_probability"),
        ("loop.center_click_probability=-0.1", "loop.center_click_probability"),
        ("loop.loss_rounds=some", "loop.loss_rounds"),
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("optim.decay_steps=[1.5]", "optim.decay_steps"),
        ("data.jitter_scale=[2.0, 1.0]", "data.jitter_scale"),
        ("data.datasets=[]", "data.datasets"),
        ("data.color_jitter=2", "data.color_jitter"),
        ("data.copy_paste=1.5", "data.copy_paste"),
        ("data.copy_paste_scale=[0.0, 1.0]", "data.copy_paste_scale"),
        ("loop.checkpoint_every=0", "loop.checkpoint_every"),
        ("loop.iou_weight=inf", "loop.iou_weight"),
        ("model.preset=nosuch", "model.preset"),  # T20
        ("model.drop_path_rate=1", "model.drop_path_rate"),
    ],
)
def test_bad_settings_are_refused_naming_the_key_and_nothing_is_written(
    tmp_path: Path, shared_data: Path, override: str, key: str
) -> None:
    recipe = _recipe(tmp_path, shared_data)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(recipe, [override])
    out = tmp_path / "run"
    assert main(["train", str(recipe), override, "--output", str(out), "--no-progress"]) == 2
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_cuda_without_a_gpu_is_refused(tmp_path: Path, shared_data: Path) -> None:  # T19
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="loop.device"):
        load_config(_recipe(tmp_path, shared_data), ["loop.device=cuda"])


def test_binary_and_unreadable_recipes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # T07
    garbage = tmp_path / "binary.toml"
    garbage.write_bytes(b"\xff\xfe\x00garbage\x80")
    assert main(["train", str(garbage), "--output", str(tmp_path / "run")]) == 2
    assert "not a text file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_earlier_run_is_neither_overwritten_nor_touched_by_a_failing_run(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, shared_data)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "loop.steps=1", "--output", str(out), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"checkpoint.pt", "model.safetensors", "config.json", "metrics.csv"} <= set(before)
    capsys.readouterr()

    # T24: a new run into the folder is refused (auto needs --overwrite for the same)
    assert main(["train", str(recipe), "--output", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    # T23: a bad recipe into it, even with --overwrite, leaves it as it was
    assert main(["train", str(recipe), "optim.lr=-1", "--output", str(out), "--overwrite"]) == 2
    assert main(["train", str(recipe), "--output", str(out), "--resume", "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # --resume continues it; --overwrite starts again from step 0
    assert main(["train", str(recipe), "--output", str(out), "--resume", "--no-progress"]) == 0
    assert load_training_state(out, 0)["step"] == 2
    assert main(["train", str(recipe), "loop.steps=1", "--output", str(out), "--overwrite", "--no-progress"]) == 0
    assert load_training_state(out, 0)["step"] == 1
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header + the new run's one step


def test_a_file_where_the_run_folder_should_be_is_refused(tmp_path: Path, shared_data: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    assert main(["train", str(_recipe(tmp_path, shared_data)), "--output", str(tmp_path / "run")]) == 2


def test_resume_states_load_without_unpickling_and_bad_ones_are_refused(tmp_path: Path, shared_data: Path) -> None:
    recipe = _recipe(tmp_path, shared_data)
    out = tmp_path / "run"
    train(load_config(recipe, ["loop.steps=1"]), out, progress=False)
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)  # plain data only
    assert state["step"] == 1 and set(state["rng"]) >= {"torch", "numpy", "python"}
    config_before = (out / "config.json").read_bytes()

    # T10: a truncated checkpoint: exit 2, the run's config.json untouched
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingStateError, match="cannot resume"):
        load_training_state(out, 0)
    assert main(["train", str(recipe), "--output", str(out), "--resume", "--no-progress"]) == 2
    assert (out / "config.json").read_bytes() == config_before

    # a planted pickle that would run code is refused, and the code never runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"step": 1, "rng": Evil(), "model": {}, "optimizer": {}, "scheduler": {}}, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())
    assert main(["train", str(recipe), "--output", str(out), "--resume", "--no-progress"]) == 2
    assert not marker.exists()


def test_a_state_from_another_model_is_refused(tmp_path: Path, shared_data: Path) -> None:
    recipe = _recipe(tmp_path, shared_data)
    out = tmp_path / "run"
    train(load_config(recipe, ["loop.steps=1"]), out, progress=False)
    assert (
        main(["train", str(recipe), "model.preset=conv_small", "--output", str(out), "--resume", "--no-progress"]) == 2
    )


def test_a_non_finite_loss_stops_the_run_at_its_step(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segany.train.loop as loop_mod

    real = loop_mod.interactive_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loop_mod, "interactive_step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="step 3"):
        train(load_config(_recipe(tmp_path, shared_data), ["loop.steps=5"]), out, progress=False)
    assert calls["n"] == 3  # stopped at once, not at the end of the run
    assert load_training_state(out, 0)["step"] == 2  # the last good checkpoint is kept
    state = torch.load(out / "model.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_data_caches_are_plain_arrays_and_planted_pickles_are_refused(tmp_path: Path, shared_data: Path) -> None:
    items = build_cache(shared_data / "SUIM_sample", None, 64, tmp_path / "cache", limit=2)
    (path,) = (tmp_path / "cache").glob("*.npz")
    again = read_cache(path)
    assert [i.source for i in again] == [i.source for i in items]
    assert all(np.array_equal(a.image, b.image) and a.rles == b.rles for a, b in zip(items, again))
    # an object array (a pickle inside the .npz) is refused, not unpickled
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    evil = np.empty(1, dtype=object)
    evil[0] = Evil()
    np.savez(path, meta=evil, image0=items[0].image)
    with pytest.raises(ValueError, match="unreadable training cache"):
        build_cache(shared_data / "SUIM_sample", None, 64, tmp_path / "cache", limit=2)
    assert not marker.exists()
    # and a file of the right kind with a wrong image is refused too
    write_cache(path, [CachedImage(np.zeros((4, 4), np.uint8), [], np.zeros(0), np.zeros(0, int), "x")])
    with pytest.raises(ValueError, match="image0"):
        read_cache(path)
