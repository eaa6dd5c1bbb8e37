from ssl_jax.evaluate import label_efficiency


def _probe(top1, few):
    return {
        "top1": top1,
        "few_labels": [{"per_class": k, "top1": v, "top1_std": 0.01} for k, v in few],
    }


def test_curve_rows_cover_every_encoder_and_budget(tmp_path):
    results = {
        "task": "rotation",
        "model": "convnet",
        "probe_train_size": 1000,
        "num_classes": 10,
        "linear_probe": _probe(0.9, [(1, 0.4), (10, 0.8)]),
        "random_init": {"linear_probe": _probe(0.85, [(1, 0.3), (10, 0.7)])},
    }
    rows = label_efficiency.curve_rows(results)
    assert [(r["encoder"], r["labels_per_class"], r["top1"]) for r in rows] == [
        ("rotation", 1, 0.4),
        ("rotation", 10, 0.8),
        ("rotation", 100.0, 0.9),
        ("random init", 1, 0.3),
        ("random init", 10, 0.7),
        ("random init", 100.0, 0.85),
    ]
    named = label_efficiency.curve_rows(results, name="rot-A")
    assert named[0]["encoder"] == "rot-A"
    assert named[3]["encoder"] == "random init, rot-A's convnet"
    label_efficiency.save_csv(rows, str(tmp_path / "c.csv"))
    assert (tmp_path / "c.csv").read_text().splitlines()[1] == "rotation,1,0.4,0.01"
    label_efficiency.save_plot(rows, str(tmp_path / "c.png"), title="t")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_supervised_from_scratch_is_its_own_dotted_line_with_the_all_label_point(tmp_path):
    results = {
        "task": "mae",
        "model": "vit",
        "probe_train_size": 1000,
        "num_classes": 10,
        "linear_probe": _probe(0.9, [(1, 0.4)]),
        "supervised": {"linear_probe": _probe(0.95, [(1, 0.9)]), "top1": 0.97},
        "supervised_from_scratch": [{"per_class": 1, "top1": 0.2, "train_size": 10}],
    }
    rows = label_efficiency.curve_rows(results, name="mae")
    scratch = [r for r in rows if r["encoder"].startswith("supervised from scratch")]
    assert [(r["encoder"], r["labels_per_class"], r["top1"]) for r in scratch] == [
        ("supervised from scratch, mae's vit", 1, 0.2),
        ("supervised from scratch, mae's vit", 100.0, 0.97),
    ]
    # Without the all-label supervised run there is no all-label point.
    del results["supervised"]
    assert [r["labels_per_class"] for r in label_efficiency.curve_rows(results)][-1] == 1
    label_efficiency.save_plot(rows, str(tmp_path / "c.png"), title="t")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_from_scratch_curve_skips_the_all_label_point_of_another_dataset():
    results = {
        "task": "mae",
        "model": "vit",
        "dataset": "tfds:imagenet2012",
        "probe_dataset": "digits",
        "probe_train_size": 1000,
        "num_classes": 10,
        "linear_probe": _probe(0.9, [(1, 0.4)]),
        "supervised": {"linear_probe": _probe(0.95, [(1, 0.9)]), "top1": 0.7},
        "supervised_from_scratch": [{"per_class": 1, "top1": 0.2, "train_size": 10}],
    }
    scratch = [
        r for r in label_efficiency.curve_rows(results) if r["encoder"] == "supervised from scratch"
    ]
    assert [r["labels_per_class"] for r in scratch] == [1]
