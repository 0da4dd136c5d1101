"""Preset mechanics: MT-net mask, learned rates, ANIL head, Meta-Curvature, all against direct formulas."""

import pytest
import torch

from metatuv.meta import PRESETS, MetaLearner, get_preset, mask_sample, mse
from metatuv.metric import mask_fractions
from metatuv.nn import TUVLinear, bound_factors, mlp

D = torch.float64


def learner_for(name, steps=1, **kw):
    p = get_preset(name)
    model = bound_factors(mlp([2, 4, 3], p.use_T, p.use_V, p.use_mask).double(), p.bound, 10.0)
    return MetaLearner.from_preset(model, p, mse, lr=0.1, steps=steps, **kw)


def support():
    return torch.randn(5, 2, dtype=D), torch.randn(5, 3, dtype=D)


def test_mask_sample_is_hard_forward_and_sigmoid_backward():
    logit = torch.tensor([0.3, -2.0, 1.0], dtype=D, requires_grad=True)
    noise = torch.tensor([0.0, 1.0, -2.0], dtype=D)
    m = mask_sample(logit, noise, temperature=0.5)
    assert m.tolist() == [1.0, 0.0, 0.0]
    m.sum().backward()
    s = torch.sigmoid((logit.detach() + noise) / 0.5)
    assert torch.allclose(logit.grad, s * (1 - s) / 0.5, atol=1e-15)


def test_mtnet_mask_freezes_off_rows_of_U():
    learner = learner_for("mtnet")
    xs, ys = support()
    params = learner.params()
    noise = {
        "0.mask_logit": torch.tensor([5.0, -5.0, 5.0, -5.0], dtype=D),
        "2.mask_logit": torch.full((3,), 5.0, dtype=D),
    }
    adapted = learner.adapt_task(params, xs, ys, steps=2, extra=noise)
    dU = adapted["0.U"] - params["0.U"]
    db = adapted["0.bias"] - params["0.bias"]
    assert torch.equal(dU[1], torch.zeros_like(dU[1])) and torch.equal(dU[3], torch.zeros_like(dU[3]))
    assert dU[0].abs().sum() > 0 and dU[2].abs().sum() > 0 and db[1] == 0 and db[0] != 0
    assert not torch.equal(adapted["2.U"], params["2.U"])
    assert mask_fractions(learner.model) == {
        "0": {"hard": 0.0, "expected": 0.5},
        "2": {"hard": 0.0, "expected": 0.5},
    }  # logits start at 0: σ(0) = ½ expected on, none strictly > ½


def test_metasgd_and_lslr_rates_enter_the_update():
    xs, ys = support()
    for name in ("metasgd", "lslr"):
        learner = learner_for(name, steps=2)
        rates = dict(learner.rule.lrs.named_parameters())
        assert len(rates) == len(learner.fast_names)
        with torch.no_grad():
            for r in rates.values():
                r.fill_(0.0)
        adapted = learner.adapt_task(learner.params(), xs, ys)
        assert all(torch.equal(adapted[n], learner.params()[n]) for n in learner.fast_names), name
    lslr = learner_for("lslr", steps=3)
    assert lslr.rule.lrs["0__U"].shape == (3,)


def test_anil_adapts_only_the_head():
    learner = learner_for("anil")
    assert learner.fast_names == ["2.U", "2.bias"]
    xs, ys = support()
    adapted = learner.adapt_task(learner.params(), xs, ys)
    assert torch.equal(adapted["0.U"], learner.params()["0.U"]) and not torch.equal(
        adapted["2.U"], learner.params()["2.U"]
    )


def test_metacurvature_identity_equals_maml_and_factors_apply():
    xs, ys = support()
    torch.manual_seed(0)
    mc = learner_for("metacurvature")
    torch.manual_seed(0)
    maml = learner_for("maml")
    a = mc.adapt_task(mc.params(), xs, ys)
    b = maml.adapt_task(maml.params(), xs, ys)
    assert all(torch.allclose(a[n], b[n], atol=1e-14) for n in b)
    # non-identity factors: ΔU = α·M_o·G·M_i for the first layer
    with torch.no_grad():
        mc.rule.curvature["0__U_o"].add_(0.3 * torch.randn(4, 4, dtype=D))
        mc.rule.curvature["0__U_i"].add_(0.3 * torch.randn(2, 2, dtype=D))
    U = mc.params()["0.U"].detach().requires_grad_()
    (G,) = torch.autograd.grad(mse(torch.func.functional_call(mc.model, {**mc.params(), "0.U": U}, (xs,)), ys), U)
    adapted = mc.adapt_task(mc.params(), xs, ys)
    Mo, Mi = mc.rule.curvature["0__U_o"].detach(), mc.rule.curvature["0__U_i"].detach()
    assert torch.allclose(adapted["0.U"] - U.detach(), -0.1 * Mo @ G @ Mi, atol=1e-14)


def test_presets_build_and_rules_are_documented():
    assert {"maml", "fomaml", "metasgd", "lslr", "anil", "metacurvature", "tnet", "mtnet", "tuv", "mtuv"} <= set(
        PRESETS
    )
    layer = mlp([2, 3], *[True, True, True])[0]
    assert isinstance(layer, TUVLinear) and layer.mask_logit.shape == (3,)
    with pytest.raises(ValueError, match="unknown preset 'mamlx'"):
        get_preset("mamlx")


def test_model_config_files_hold_the_presets_fields():
    """conf/model/<name>.yaml holds exactly get_preset(name)'s fields, one file per preset; build_learner's Preset
    is made from them (so a field changed on the command line is a variant, named after what changed)."""
    from hydra import compose, initialize_config_dir

    from metatuv.build import PRESET_FIELDS, preset_of
    from metatuv.train import CONF_DIR

    assert {p.stem for p in (CONF_DIR / "model").glob("*.yaml")} == set(PRESETS)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name, preset in PRESETS.items():
            model = compose("config", [f"model={name}"]).model
            assert {k: model[k] for k in PRESET_FIELDS} == {k: getattr(preset, k) for k in PRESET_FIELDS}, name
            assert preset_of(model) == preset
        variant = preset_of(compose("config", ["model=tnet", "model.lr_mode=metasgd"]).model)
        assert (variant.name, variant.use_T, variant.lr_mode) == ("tnet[lr_mode=metasgd]", True, "metasgd")
        with pytest.raises(ValueError, match=r"^model.bound=tanh needs a preset with T or V .*not maml\.$"):
            preset_of(compose("config", ["model=maml", "model.bound=tanh"]).model)


def test_bad_backend_fails_clearly():
    with pytest.raises(ValueError, match="backend='jax'"):
        MetaLearner(mlp([1, 2, 1]), mse, lr=0.1, steps=1, backend="jax")
