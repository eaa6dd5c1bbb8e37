"""The dense evaluator: a linear segmentation probe on the frozen encoder's
spatial features (`Task.feature_maps`: a ConvNet's or ResNet's last stage, a
ViT's patch tokens on their grid), trained per pixel with its scores
bilinearly upsampled to the masks (`evaluate/segmentation.py`), scored by
mean IoU and pixel accuracy on the dataset's test split.

    config.evals.segmentation_probe = {"type": "segmentation_probe"}     # the embedded digit scenes
    config.evals.seg_photos = {"type": "segmentation_probe", "dataset": "segfolder:/data/seg"}

Data: `data/segmentation.py` (`digit_scenes`, the default, an image
folder with a masks folder, or that folder's records written by
`python -m ssl_jax.prepare --source=segfolder:`), at the run's image size or the entry's
`image_size` (encoders take other sizes: convolutions, and ViTs' sin-cos
position embeddings made for the grid they get). With
`baselines.random_init`, the random-init evaluator runs the same probe on
the encoder at its initialisation (`baseline`), under
`random_init/<entry name>`. A picture of test scenes, their true masks and
the predicted ones is saved as `WORKDIR/segmentation_<name>.png` (and
`..._random_init.png`) and logged to TensorBoard.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import inference, nonfinite, storage
from ssl_jax.data import segmentation as seg_data
from ssl_jax.data.base import padded_batches
from ssl_jax.evaluate import segmentation as seg_eval
from ssl_jax.evaluators.base import Context, Evaluator, register

_PICTURE_SIDE = 384  # the picture is upscaled by whole pixels until its shorter side reaches this


@functools.lru_cache(maxsize=4)
def _splits(dataset: str, image_size: int, data_dir: str | None):
    """(train, test) of a segmentation dataset, loaded once per run (the
    pretrained and the random-init probes share them)."""
    kwargs = {"image_size": image_size, "data_dir": data_dir}
    return tuple(seg_data.load_segmentation(dataset, s, **kwargs) for s in ("train", "test"))


def feature_maps(trained: inference.TrainedModel, images: np.ndarray, batch_size: int, mesh):
    """float32 [N, h, w, D]: the frozen encoder's spatial features of `images`."""
    maps_fn = inference.make_features_fn(trained, mesh, method="feature_maps")
    labels = np.zeros(len(images), np.int32)
    parts = [
        np.asarray(maps_fn(x), np.float32)[m]
        for x, m, _ in padded_batches(images, labels, batch_size)
    ]
    out = np.concatenate(parts)
    if not np.isfinite(out).all():
        raise nonfinite.NonFiniteLossError(
            "The encoder's spatial features hold NaN/Inf: its weights have diverged. "
            "Lower the learning rate and train again in a new --workdir."
        )
    return out


@register("segmentation_probe")
@dataclasses.dataclass(kw_only=True)
class SegmentationProbe(Evaluator):
    """A 1x1 linear head on the frozen spatial features, per pixel; mIoU and
    pixel accuracy on the test split (see the module docstring)."""

    dataset: str = "digit_scenes"
    steps: int = 500  # Adam steps of the head, cosine-decayed
    batch_size: int = 64  # scenes per step
    learning_rate: float = 0.01
    l2: float = 1e-4  # on the head's weights, features standardised
    examples: int = 8  # test scenes in the picture
    # The size the encoder sees the scenes at; 0: the run's image_size times
    # image_scale, read when the run starts (a later --config.image_size
    # moves it too). The `:segmentation` option sets image_scale 2, so that
    # the 8 px digits of the 16 px scenes reach the size pretraining saw them
    # at (see config_lib).
    image_size: int = 0
    image_scale: int = 1

    def check(self, config: ConfigDict, num_devices: int) -> None:
        where = f"config.evals.{self.name}"
        for field in ("steps", "batch_size", "examples", "image_size", "image_scale"):
            value = getattr(self, field)
            least = 0 if field == "image_size" else 1  # image_size 0: the run's own
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{where}.{field} must be an int >= {least}, got {value!r}.")
        patch = config.model_kwargs.get("patch_size")
        if patch and self.size(config) % patch:
            raise ValueError(
                f"{where}.image_size {self.size(config)} is not a multiple of the patch size "
                f"{patch}: choose a multiple."
            )
        if not self.learning_rate > 0 or not self.l2 >= 0:
            raise ValueError(f"{where} needs learning_rate > 0 and l2 >= 0.")
        kind = self.dataset.partition(":")[0]
        if kind not in seg_data.SOURCE_KINDS:
            raise ValueError(
                f"{where}.dataset={self.dataset!r}: use digit_scenes[:options], "
                "segfolder:/path/to/root (images/ and masks/ per split) or "
                "segrecords:/path/to/records (written by prepare --source=segfolder:)."
            )
        task = nnx.eval_shape(lambda: inference.build_task(config))
        if task.feature_input.key != "image" or not hasattr(task.feature_encoder(), "feature_map"):
            raise ValueError(
                f"{where} needs an image encoder with a spatial map (ConvNet, ResNet, ViT); "
                f"{config.task} on {config.model} has none: remove the entry."
            )

    def check_data(self, config: ConfigDict, splits) -> None:
        # Loads (and caches) the data before pretraining: a bad folder fails now.
        _splits(self.dataset, self.size(config), config.data_dir or None)

    def size(self, config: ConfigDict) -> int:
        return self.image_size or config.image_size * self.image_scale

    def run(self, context: Context) -> dict[str, Any]:
        return self.evaluate(context, context.trained, suffix="")

    def baseline(self, context: Context, trained: inference.TrainedModel) -> dict[str, Any]:
        return self.evaluate(context, trained, suffix="_random_init")

    def pictures(self, workdir: str) -> dict[str, str]:
        return {
            f"{self.log_prefix}/masks{suffix}": self.picture_path(workdir, suffix)
            for suffix in ("", "_random_init")
        }

    def picture_path(self, workdir: str, suffix: str) -> str:
        return storage.join(workdir, f"segmentation_{self.name}{suffix}.png")

    def evaluate(self, context: Context, trained, *, suffix: str) -> dict[str, Any]:
        config = context.config
        train, test = _splits(self.dataset, self.size(config), config.data_dir or None)
        batch = config.probe.batch_size
        train_maps = feature_maps(trained, train.images, batch, context.mesh)
        predict, final_loss = seg_eval.fit_head(
            train_maps,
            train.masks,
            num_classes=train.num_classes,
            ignore=seg_data.IGNORE,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            l2=self.l2,
            seed=config.seed,
        )
        predicted = predict(feature_maps(trained, test.images, batch, context.mesh))
        confusion = seg_eval.confusion_matrix(
            predicted, test.masks, train.num_classes, seg_data.IGNORE
        )
        figures = seg_eval.scores(confusion)
        if jax.process_index() == 0 and config.save_plots:
            self._save_picture(context.workdir, suffix, test, predicted)
        return {
            "miou": figures["miou"],
            "pixel_accuracy": figures["pixel_accuracy"],
            # None where a class is in neither the truth nor the prediction.
            "class_iou": {
                name: None if np.isnan(iou) else float(iou)
                for name, iou in zip(train.class_names, figures["iou"], strict=True)
            },
            "final_loss": final_loss,
            "feature_grid": list(train_maps.shape[1:3]),
            "dataset": train.name,
            "image_size": self.size(config),
        }

    def _save_picture(self, workdir: str, suffix: str, test, predicted) -> None:
        from PIL import Image

        n = min(self.examples, len(test))
        picture = seg_eval.masks_picture(
            test.images[:n], test.masks[:n], predicted[:n], test.num_classes, seg_data.IGNORE
        )
        zoom = max(1, _PICTURE_SIDE // min(picture.shape[:2]))
        picture = np.repeat(np.repeat(picture, zoom, axis=0), zoom, axis=1)
        # Written locally and copied up: the workdir may be a bucket.
        with storage.staged(self.picture_path(workdir, suffix)) as path:
            Image.fromarray(picture).save(path, format="PNG")
