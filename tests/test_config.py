import pytest
import torch

from pairreg.config import ConfigError, load_config, preset_names
from pairreg.data.molecules import make_batch
from pairreg.testing.equivariance import random_molecules
from pairreg.training.losses import total_loss
from pairreg.training.module import build_model, lr_factor
import numpy as np


def test_presets_shipped():
    assert {"qm9-demo", "qm9-cpu", "qm9-egnn", "qm9-paper"} <= set(preset_names())


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_and_trains_one_step(preset):
    cfg = load_config(preset)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    zs, ps = random_molecules([5, 8], np.random.default_rng(0))
    b = make_batch(zs, ps, ys=np.zeros((2, len(cfg.targets))))
    before = [p.detach().clone() for p in model.parameters()]
    y, rec = model(b.z, b.pos, b.batch, b.edge_index, 2)
    loss, _ = total_loss(model, y, model.to_standard(b.y), rec)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_paper_preset_is_the_papers_schedule():
    cfg = load_config("qm9-paper")
    assert (cfg.optimizer, cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.lr_min, cfg.n_layers) == (
        "adam", 64, 1000, 250, 1e-4, 1e-8, 9)


@pytest.mark.parametrize("overrides,match", [
    (["n_layer=3"], "Did you mean 'n_layers'"),
    (["lr=fast"], "lr must be a number"),
    (["n_layers=0"], "n_layers must be > 0"),
    (["targets=homo,gapp"], "Did you mean 'gap'"),
    (["mitigation=pairnormm"], "Did you mean .pairnorm."),
    (["mitigation=none", "reg_weight=1"], "do not apply to mitigation 'none'"),
    (["update_coords=false", "reg_target=previous"], "update_coords is off"),
    (["warmup_epochs=20", "epochs=10"], "exceeds epochs"),
    (["lr"], "expected key=value"),
    (["n_rbf=-4"], "n_rbf must be >= 0"),
    (["n_rbf=16", "rbf_max_A=0"], "rbf_max_A must be > 0 Å"),
])
def test_bad_overrides_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("qm9-demo", overrides)


def test_config_file_errors_name_the_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("hiden: 3\n")
    with pytest.raises(ConfigError, match=r"my.yaml: unknown key 'hiden'. Did you mean 'hidden'"):
        load_config(None, [], f)


def test_overrides_parse_types():
    cfg = load_config("qm9-demo", ["targets=homo,gap", "lr=2e-4", "update_coords=true", "reg_weight=2"])
    assert cfg.targets == ["homo", "gap"] and cfg.lr == 2e-4 and cfg.update_coords is True and cfg.reg_weight == 2.0


def test_warmup_cosine_schedule():
    f = [lr_factor(s, 100, 10, "warmup-cosine", 1e-4, 1e-8) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0) and f[-1] < 0.01 and f[-1] >= 1e-4
    assert all(a >= b for a, b in zip(f[9:], f[10:]))


def test_distance_basis_is_used_only_when_asked():
    plain = build_model(load_config("qm9-demo", ["hidden=8", "n_layers=2"]))
    basis = build_model(load_config("rmd17-cpu", ["hidden=8", "n_layers=2"]))
    assert not hasattr(plain.backbone.layers[0], "edge_in_rbf")
    layer = basis.backbone.layers[0]
    assert layer.edge_in_rbf.in_features == 64 and float(layer.rbf.centres[-1]) == 6.0


# --- issue 13: non-finite floats and absurd sizes -----------------------------------------------

from pairreg import config as config_module  # noqa: E402


def test_float_fields_are_found_from_the_annotations():
    names = config_module._float_fields()
    assert {"lr", "coord_noise", "weight_decay", "reg_weight", "grad_clip", "rbf_max_A"} <= set(names)
    assert "hidden" not in names and "targets" not in names


@pytest.mark.parametrize("key", config_module._float_fields())
@pytest.mark.parametrize("text", [".nan", "nan", ".inf", "-inf"])
def test_every_float_field_must_be_finite(key, text):
    # NaN passes every `<= 0` check; coord_noise=.nan used to train with the noise silently ignored
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got (nan|-?inf)$"):
        load_config("qm9-demo", [f"{key}={text}"])


def test_a_config_file_can_start_from_a_preset_and_its_own_keys_win(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: rmd17-1h\nhidden: 32\n")
    mine, base = load_config(None, [], f).to_dict(), load_config("rmd17-1h", []).to_dict()
    assert mine["hidden"] == 32 and base["hidden"] != 32
    assert {k for k in mine if mine[k] != base[k]} == {"hidden", "preset"}  # preset: informational, --preset only
    f.write_text("base: rmd17-1hh\n")
    with pytest.raises(ConfigError, match="unknown preset 'rmd17-1hh'.*Did you mean 'rmd17-1h'"):
        load_config(None, [], f)
    f.write_text("base: [rmd17-1h]\n")
    with pytest.raises(ConfigError, match="mine.yaml: base must be the name of a preset"):
        load_config(None, [], f)


def test_preset_bases_chain_name_the_file_of_a_bad_key_and_refuse_a_cycle(tmp_path, monkeypatch):
    from pairreg import config

    monkeypatch.setattr(config, "preset_path", lambda name: tmp_path / f"{name}.yaml")
    (tmp_path / "a.yaml").write_text("base: b\nhidden: 8\n")
    (tmp_path / "b.yaml").write_text("base: c\nhidden: 16\nn_layers: 5\n")
    (tmp_path / "c.yaml").write_text("n_layers: 4\nlr: 0.01\n")
    cfg = load_config("a", [])
    assert (cfg.hidden, cfg.n_layers, cfg.lr, cfg.preset) == (8, 5, 0.01, "a")
    (tmp_path / "c.yaml").write_text("n_layer: 4\n")
    with pytest.raises(ConfigError, match=r"preset 'c' \(.*c.yaml\): unknown key 'n_layer'"):
        load_config("a", [])
    (tmp_path / "c.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match=r"base 'a' makes a cycle \(a -> b -> c -> a\)"):
        load_config("a", [])


def test_non_finite_float_in_a_config_file_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("coord_noise: .nan\n")
    with pytest.raises(ConfigError, match="coord_noise must be a finite number"):
        load_config("qm9-demo", [], f)


@pytest.mark.parametrize("overrides,match", [
    # 4 B × 32 molecules × 29·28 edges × 9 layers × 9 hidden-wide tensors × 1e7 ≈ 84,000 GB
    (["hidden=10000000"], r"about 84,188 GB of activations .*limit is 100 GB"),
    (["hidden=4000"], r"about 1\.34e\+09 parameters .*limit is 1e\+09"),
    (["hidden=100000", "batch_size=1"], r"hidden=100000, n_layers=9: the model would have about 5\.4e\+11 parameters"),
    (["n_layers=1000000", "hidden=1"], r"n_layers=1000000 is more than 1000 layers"),
    (["n_rbf=100000000", "hidden=8"], r"GB of activations"),
])
def test_absurd_sizes_are_refused_with_the_estimate(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("qm9-demo", overrides)


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("extra", [[], ["mitigation=g2"], ["mitigation=pairnorm"], ["mitigation=none", "n_rbf=8"],
                                   ["mitigation=pairreg", "ablation=node-only", "node_attr=false"]])
def test_parameter_count_on_meta_equals_the_built_model(preset, extra):
    cfg = load_config(preset, ["hidden=16", "n_layers=3", *extra])
    assert config_module.count_parameters(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def test_shipped_presets_are_far_below_the_size_limits():
    for preset in preset_names():
        cfg = load_config(preset)
        assert config_module.count_parameters(cfg) < config_module.MAX_PARAMETERS / 100
        assert config_module.activation_bytes(cfg) < config_module.MAX_ACTIVATION_BYTES / 10
