import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import optim

PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4))},
    "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
}


def test_decay_mask_excludes_biases_and_norm_parameters():
    mask = optim.decay_mask(PARAMS)
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False}}


@pytest.mark.parametrize(
    "scaling, expected", [("none", 0.2), ("linear", 0.2 * 512 / 256), ("sqrt", 0.2 * 512**0.5)]
)
def test_learning_rate_scaling(scaling, expected):
    opt = optim.default_config(learning_rate=0.2, lr_scaling=scaling)
    assert optim.scaled_learning_rate(opt, 512) == pytest.approx(expected)


def test_schedule_warms_up_then_decays_to_end_fraction():
    opt = optim.default_config(
        learning_rate=1.0, lr_scaling="none", warmup_steps=10, end_lr_fraction=0.1
    )
    schedule = optim.make_schedule(opt, batch_size=256, total_steps=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    values = [float(schedule(s)) for s in range(10, 101)]
    assert all(a >= b - 1e-7 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_weight_decay_touches_kernels_only(name):
    """With zero gradients, only weight decay moves parameters."""
    opt = optim.default_config(
        name=name, learning_rate=0.1, lr_scaling="none", warmup_steps=0, weight_decay=0.1
    )
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    assert np.all(np.asarray(new["conv"]["kernel"]) < 1.0)
    np.testing.assert_array_equal(new["bn"]["scale"], PARAMS["bn"]["scale"])
    np.testing.assert_array_equal(new["bn"]["bias"], PARAMS["bn"]["bias"])


def test_lars_adapts_kernels_by_trust_ratio_but_not_biases():
    opt = optim.default_config(
        name="lars",
        learning_rate=1.0,
        lr_scaling="none",
        warmup_steps=0,
        weight_decay=0.0,
        momentum=0.0,
        trust_coefficient=0.001,
    )
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    grads = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    # Kernel: lr * trust * ||w|| / ||g|| * g = 0.001 * (||w|| / ||g||) * 2 = 0.001
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.001, rtol=1e-5)
    np.testing.assert_allclose(updates["bn"]["bias"], -2.0, rtol=1e-6)  # plain SGD step


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_end_is_a_cosine_over_the_run(name):
    """With zero gradients a kernel shrinks by lr * wd(t) per step; wd(t) the
    reference I-JEPA's cosine from weight_decay to weight_decay_end, in numpy
    float64, for every step of the run and past its end. Biases never decay."""
    total, lr, wd0, wd1 = 12, 0.1, 0.04, 0.4
    opt = optim.default_config(
        name=name,
        learning_rate=lr,
        lr_scaling="none",
        end_lr_fraction=1.0,
        momentum=0.0,
        weight_decay=wd0,
    )
    opt.weight_decay_end = wd1
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=total)
    params, state = PARAMS, tx.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    kernel = 1.0
    for t in range(total + 3):
        wd = wd1 + (wd0 - wd1) * 0.5 * (1 + np.cos(np.pi * min(t / total, 1.0)))
        kernel *= 1 - lr * wd
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["conv"]["kernel"], kernel, rtol=1e-5)
    np.testing.assert_array_equal(params["bn"]["bias"], PARAMS["bn"]["bias"])


def test_weight_decay_end_unset_or_equal_keeps_the_decay_constant():
    opt = optim.default_config(weight_decay=0.04)
    assert optim.weight_decay_schedule(opt, 100) == 0.04
    opt.weight_decay_end = 0.04  # no change: a constant, so the state of a run without one
    assert optim.weight_decay_schedule(opt, 100) == 0.04
    opt.weight_decay_end = -0.4
    with pytest.raises(ValueError, match="weight_decay_end must be >= 0"):
        optim.make_optimizer(opt, batch_size=256, total_steps=10)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", -0.1, "learning_rate must be > 0"),
        ("name", "adam_typo", "not one of"),
        ("weight_decay", -1.0, "weight_decay must be >= 0"),
        ("lr_scaling", "cubic", "lr_scaling"),
    ],
)
def test_bad_optimizer_values_are_clear_errors(field, value, message):
    opt = optim.default_config(**{field: value})
    with pytest.raises(ValueError, match=message):
        optim.make_optimizer(opt, batch_size=256, total_steps=10)


def test_schedule_is_the_cosine_formula_to_the_last_step():
    # Every step against warm-up + cosine written out: a schedule that ended its
    # decay early (and sat at the end value) would still end at 0.1.
    opt = optim.default_config(
        learning_rate=2.0, lr_scaling="none", warmup_steps=10, end_lr_fraction=0.1
    )
    total, peak, end = 100, 2.0, 0.2
    schedule = optim.make_schedule(opt, batch_size=256, total_steps=total)
    for step in range(0, total + 1):
        if step < 10:
            expected = peak * step / 10
        else:
            expected = end + (peak - end) * 0.5 * (1 + np.cos(np.pi * (step - 10) / (total - 10)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-6), step


def test_clipped_lars_takes_the_smaller_of_the_trust_ratio_and_sgd_steps():
    rng = np.random.default_rng(0)
    params = {
        "big": {"kernel": jnp.asarray(100 * rng.normal(size=(4, 4)), jnp.float32)},
        "tiny": {"kernel": jnp.asarray(1e-4 * rng.normal(size=(4, 4)), jnp.float32)},
        "bn": {"bias": jnp.ones((4,))},
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    lr, eta, wd = 0.3, 0.02, 1e-4
    opt = optim.default_config(
        name="lars",
        learning_rate=lr,
        lr_scaling="none",
        warmup_steps=0,
        weight_decay=wd,
        momentum=0.0,
        trust_coefficient=eta,
        lars_clip=True,
    )
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    for name in ("big", "tiny"):  # u = g + wd w; step = min(eta ||w|| / ||u||, lr) u
        w, g = np.asarray(params[name]["kernel"]), np.asarray(grads[name]["kernel"])
        u = g + wd * w
        expected = -min(eta * np.linalg.norm(w) / np.linalg.norm(u), lr) * u
        np.testing.assert_allclose(updates[name]["kernel"], expected, rtol=1e-5)
    # "big" is clipped to plain SGD, "tiny" keeps its trust-ratio step.
    assert eta * np.linalg.norm(params["big"]["kernel"]) / np.linalg.norm(0.5 * np.ones(16)) > lr
    np.testing.assert_allclose(updates["bn"]["bias"], -lr * 0.5, rtol=1e-6)  # no decay, no ratio


def test_bias_lr_scale_scales_only_biases_and_norms():
    opt = optim.default_config(
        lr_scaling="none", learning_rate=0.1, warmup_steps=0, weight_decay=0.0, momentum=0.0
    )
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    plain, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    opt.bias_lr_scale = 0.024
    scaled, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    a, _ = plain.update(grads, plain.init(PARAMS), PARAMS)
    b, _ = scaled.update(grads, scaled.init(PARAMS), PARAMS)
    np.testing.assert_allclose(b["conv"]["kernel"], a["conv"]["kernel"])
    np.testing.assert_allclose(b["bn"]["bias"], 0.024 * a["bn"]["bias"], rtol=1e-6)


def test_warmup_fraction_follows_the_run():
    """The schedule rule: a recipe's warm-up is a fraction of the run, so a
    short run warms up for the same share as a long one and then decays."""
    opt = optim.default_config(learning_rate=1.0, lr_scaling="none", warmup_fraction=0.1)
    for total in (50, 500, 195_300):
        warmup = optim.warmup_steps(opt, total)
        assert warmup == round(0.1 * total)
        schedule = optim.make_schedule(opt, batch_size=256, total_steps=total)
        assert float(schedule(warmup)) == pytest.approx(1.0)
        assert float(schedule(total)) == pytest.approx(0.0, abs=1e-6)


def test_warmup_longer_than_the_run_is_refused():
    opt = optim.default_config(warmup_steps=1950)
    with pytest.raises(ValueError, match="longer than the run"):
        optim.make_schedule(opt, batch_size=256, total_steps=500)
    assert optim.warmup_steps(opt, 1950) == 1950


def test_warmup_steps_and_fraction_cannot_both_be_set():
    opt = optim.default_config(warmup_steps=10, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="keep one"):
        optim.warmup_steps(opt, 1000)


def test_every_recipe_states_its_warmup_as_a_fraction():
    """No config copies a paper's absolute warm-up: on a 500-step run every
    recipe (all data profiles) warms up for less than half of it."""
    from ssl_jax import config_lib

    for name in (
        "barlow_twins",
        "byol",
        "dino",
        "ibot",
        "mae",
        "moco_v3",
        "rotation",
        "simclr",
        "simsiam",
        "vicreg",
    ):
        for dataset in ("digits", "tfds:cifar10", "tfds:imagenet2012"):
            config = config_lib.get_config(name, f"dataset={dataset}")
            assert config.optimizer.warmup_steps == 0, (name, dataset)
            assert optim.warmup_steps(config.optimizer, 500) < 250, (name, dataset)


def test_fixed_lr_modules_keep_the_peak_learning_rate():
    """SimSiam's predictor: its parameters move at the peak learning rate from
    step 0, while the rest still warm up (their step 0 moves nothing)."""
    params = {"encoder": {"w": jnp.ones((2, 2))}, "predictor": {"w": jnp.ones((2, 2))}}
    opt = optim.default_config(
        name="sgd",
        learning_rate=0.5,
        lr_scaling="none",
        warmup_fraction=0.5,
        weight_decay=0.0,
        momentum=0.0,
        fixed_lr_modules=("predictor",),
    )
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["predictor"]["w"], -0.5)
    np.testing.assert_allclose(updates["encoder"]["w"], 0.0)
    bad = optim.default_config(fixed_lr_modules=("head",))
    tx, _ = optim.make_optimizer(bad, batch_size=256, total_steps=10)
    with pytest.raises(ValueError, match="does not have"):
        tx.init(params)


def test_per_tensor_clipping_clips_each_gradient_on_its_own():
    params = {"a": jnp.ones(4), "b": jnp.ones(4)}
    grads = {"a": jnp.full(4, 10.0), "b": jnp.full(4, 0.1)}  # norms 20 and 0.2
    opt = optim.default_config(
        name="sgd", learning_rate=1.0, lr_scaling="none", weight_decay=0.0, momentum=0.0
    )
    opt.update(grad_clip_norm=1.0, grad_clip="per_tensor")
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(jnp.linalg.norm(updates["a"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-6)  # untouched
    opt.grad_clip = "global_norm"
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.linalg.norm(updates["b"])) < 0.02  # scaled with the rest


def test_fixed_lr_modules_on_a_real_task_state():
    """The task's parameters are an nnx.State, not a dict: SimSiam's config
    builds and steps (this crashed with a pytree-structure error)."""
    from ssl_jax import config_lib, inference

    config = config_lib.get_config("simsiam", "runlocal")
    config.optimizer.update(weight_decay=0.0, momentum=0.0)
    trained = inference.split_task(inference.build_task(config))
    tx, _ = optim.make_optimizer(config.optimizer, batch_size=16, total_steps=6)
    grads = jax.tree.map(jnp.ones_like, trained.params)
    updates, _ = tx.update(grads, tx.init(trained.params), trained.params)
    moved = lambda tree: any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(tree))
    assert moved(updates["predictor"]) and not moved(updates["encoder"])


def test_per_tensor_clipping_is_dinos_clip_gradients():
    """Against a float64 numpy transcription of the reference's
    `clip_gradients`: coef = clip / (||g|| + 1e-6), applied where below 1."""
    rng = np.random.default_rng(0)
    grads = {
        "big": rng.normal(size=(5, 7)) * 3.0,  # norm ~ 18
        "small": rng.normal(size=(6,)) * 0.1,  # norm ~ 0.25
        "edge": np.full((4,), 1.5),  # norm 3.0: coef just under 1
    }
    params = {k: jnp.zeros(v.shape) for k, v in grads.items()}
    opt = optim.default_config(
        name="sgd", learning_rate=1.0, lr_scaling="none", weight_decay=0.0, momentum=0.0
    )
    opt.update(grad_clip_norm=3.0, grad_clip="per_tensor")
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    as_jax = {k: jnp.asarray(v, jnp.float32) for k, v in grads.items()}
    updates, _ = tx.update(as_jax, tx.init(params), params)
    for name, g in grads.items():
        g = np.asarray(g, np.float64)
        coef = 3.0 / (np.linalg.norm(g) + 1e-6)
        expected = -(g * coef if coef < 1 else g)  # SGD at lr 1: the update is -g
        np.testing.assert_allclose(np.asarray(updates[name]), expected, rtol=1e-6, atol=1e-7)


def _adamw_freeze(freeze):
    opt = optim.default_config(
        name="adamw", learning_rate=0.01, lr_scaling="none", weight_decay=0.05
    )
    opt.update(warmup_fraction=0.5, freeze=freeze)  # a warm-up: the schedule's step matters
    return opt


def test_a_frozen_parameter_keeps_its_adam_state_then_takes_a_fresh_first_step():
    rng = np.random.default_rng(1)
    params = {
        "encoder": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
        "head": {"prototypes": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)}},
    }
    opt = _adamw_freeze((("head/prototypes", 0.3),))
    tx, schedule = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    assert optim.frozen_steps(0.3, 10) == 3  # steps 0, 1, 2: progress 0, 0.1, 0.2 < 0.3
    state = initial = tx.init(params)
    held = lambda s: s.inner_states["frozen0"].inner_state
    start = params
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = tx.update(grads, state, params)
        assert not np.any(np.asarray(updates["head"]["prototypes"]["kernel"]))
        params = optax.apply_updates(params, updates)
    assert np.any(params["encoder"]["kernel"] != start["encoder"]["kernel"])  # the rest trains
    # The frozen group's AdamW state (moments, counts) is its initial state, bit for bit.
    for now, then in zip(
        jax.tree.leaves(held(state).inner), jax.tree.leaves(held(initial).inner), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(now), np.asarray(then))
    assert int(held(state).count) == 3

    # Step 3: AdamW's first step (float64 numpy) at the run's learning rate of step 3.
    g = rng.normal(size=(4, 5))
    grads = {
        "encoder": {"kernel": jnp.zeros((3, 4))},
        "head": {"prototypes": {"kernel": jnp.asarray(g, jnp.float32)}},
    }
    updates, state = tx.update(grads, state, params)
    w = np.asarray(params["head"]["prototypes"]["kernel"], np.float64)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, float(schedule(3))
    assert lr > 0.005  # well into the warm-up, not its start
    m_hat = (1 - b1) * g / (1 - b1)
    v_hat = (1 - b2) * g**2 / (1 - b2)
    expected = -lr * (m_hat / (np.sqrt(v_hat) + eps) + 0.05 * w)
    got = np.asarray(updates["head"]["prototypes"]["kernel"])
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-8)


def test_freeze_names_a_path_the_task_has():
    params = {"head": {"prototypes": {"kernel": jnp.ones((2, 2))}}}
    tx, _ = optim.make_optimizer(
        _adamw_freeze((("head/protos", 0.3),)), batch_size=256, total_steps=10
    )
    with pytest.raises(ValueError, match="optimizer.freeze names 'head/protos'.*head/prototypes"):
        tx.init(params)
    for bad in ((("head", 2.0),), (("head", "x"),), (0.1,), (("head",),)):
        with pytest.raises(ValueError, match="optimizer.freeze holds"):
            optim.make_optimizer(_adamw_freeze(bad), batch_size=256, total_steps=10)
    # No freeze (or a zero one): the optimizer state of a plain optimizer.
    plain, _ = optim.make_optimizer(_adamw_freeze(()), batch_size=256, total_steps=10)
    zero, _ = optim.make_optimizer(
        _adamw_freeze((("head/prototypes", 0.0),)), batch_size=256, total_steps=10
    )
    same = jax.tree.structure(plain.init(params)) == jax.tree.structure(zero.init(params))
    assert same


def test_a_pattern_freezes_ibots_two_prototype_layers_and_nothing_else():
    params = {
        "head": {
            "prototypes": {"kernel": jnp.ones((2, 2))},
            "patch_prototypes": {"kernel": jnp.ones((2, 2))},
            "mlp": {"kernel": jnp.ones((2, 2))},
        }
    }
    opt = optim.default_config(name="sgd", learning_rate=1.0, lr_scaling="none", momentum=0.0)
    opt.update(freeze=(("head/*prototypes", 0.3),), weight_decay=0.0)
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=10)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    moved = {name: bool(np.any(np.asarray(u["kernel"]))) for name, u in updates["head"].items()}
    assert moved == {"prototypes": False, "patch_prototypes": False, "mlp": True}


def test_a_frozen_gradient_takes_no_part_in_the_global_clip():
    # Clipped to norm 1 by one global norm: with the huge frozen gradient
    # counted, the free parameter's step would shrink 1000-fold.
    params = {"free": jnp.zeros((2,)), "head": {"prototypes": jnp.zeros((2,))}}
    grads = {"free": jnp.array([0.6, 0.8]), "head": {"prototypes": jnp.array([600.0, 800.0])}}
    opt = optim.default_config(name="sgd", learning_rate=1.0, lr_scaling="none", momentum=0.0)
    opt.update(freeze=(("head/prototypes", 0.5),), grad_clip_norm=1.0, weight_decay=0.0)
    tx, _ = optim.make_optimizer(opt, batch_size=256, total_steps=4)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["free"], [-0.6, -0.8], rtol=1e-6)
    assert not np.any(np.asarray(updates["head"]["prototypes"]))
