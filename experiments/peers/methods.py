"""The methods of the peers: one small nn.Module each, on lightly's losses,
heads and momentum utilities, shaped and weighted as ssl_jax's tasks.

Each reads its task's keyword arguments from `config.task_kwargs`, with the
ssl_jax task constructor's defaults for the ones a config leaves out (read
from its signature, so they cannot drift), and refuses any keyword it does
not implement. A method's `loss(images, labels, step)` takes uint8 NCHW
images and returns (loss, {metric: float}); `after_update(step, total)` runs
after the optimizer step with `step` counting from 1 (ssl_jax's hook);
`before_step(step)` runs between backward and the update.

Batch norm: the two-view methods call the networks once per view (the
methods' reference code, and ssl_jax's `JointEmbeddingTask.forward_views`)
with `bn="per_view"`, or once on both views concatenated with `bn="joint"`.
SimCLR always uses one call (its reference, and ssl_jax's `joint_views`);
DINO one call per crop size (its multi-crop wrapper, and ssl_jax's).

Initialisation follows ssl_jax's: the heads' `head_init` ("torch" keeps
PyTorch's default, "lecun" is Flax's default, see `models.init_linears`);
the layers ssl_jax builds with nnx.Linear's default (SimCLR's head, the
rotation head, the online probes) get "lecun".
"""

from __future__ import annotations

import copy
import importlib
import inspect

import torch
import torch.nn.functional as F
from lightly.loss import (
    BarlowTwinsLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    VICRegLoss,
)
from lightly.models.modules.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from experiments.peers import models, views
from ssl_jax.tasks.base import Task


def task_kwargs(task: str, config_kwargs, implemented: set[str]) -> dict:
    """`config.task_kwargs` over the defaults of ssl_jax's task class."""
    module = importlib.import_module(f"ssl_jax.tasks.{task}")
    (cls,) = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, Task) and c.__module__ == module.__name__
    ]
    signature = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
    given = config_kwargs.to_dict() if hasattr(config_kwargs, "to_dict") else dict(config_kwargs)
    kwargs = {**defaults, **given}
    unknown = sorted(set(kwargs) - implemented)
    if unknown:
        raise ValueError(f"The {task} peer does not implement task_kwargs {unknown}.")
    return kwargs


def frozen_fraction(config, path: str) -> float:
    """The fraction of the run for which `config.optimizer.freeze` freezes
    the parameters under `path` (0 if it names none)."""
    return dict((p, float(f)) for p, f in config.optimizer.get("freeze", ())).get(path, 0.0)


def momentum(base: float, step: int, total_steps: int) -> float:
    """ssl_jax's `teacher.momentum_schedule(base, step, total_steps)`, step
    from 1: 1 - (1 - base)(cos(pi step / total) + 1) / 2, via lightly's
    cosine_schedule (which divides by max_steps - 1)."""
    return cosine_schedule(min(step, total_steps), total_steps + 1, base, 1.0)


def frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    deactivate_requires_grad(copied)
    return copied


def lecun_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A Linear layer initialised as Flax's default (ssl_jax's online probes)."""
    layer = nn.Linear(in_dim, out_dim)
    models.init_linears(layer, "lecun")
    return layer


class Method(nn.Module):
    implemented: set[str] = set()
    teacher_pairs: tuple[str, ...] = ()  # student attributes the teacher follows by EMA

    def __init__(self, task: str, config, encoder: nn.Module, *, bn: str = "per_view"):
        super().__init__()
        if bn not in ("per_view", "joint"):
            raise ValueError(f"bn must be per_view or joint, got {bn!r}.")
        self.kw = task_kwargs(task, config.task_kwargs, self.implemented)
        self.encoder = encoder
        self.bn = bn
        self.image_size = config.image_size

    def each(self, fn, inputs: list[torch.Tensor]) -> list:
        """fn of every view: one call per view, or one on all of them (outputs
        may be tuples of tensors)."""
        if self.bn == "per_view":
            return [fn(x) for x in inputs]
        out, sizes = fn(torch.cat(inputs)), [len(x) for x in inputs]
        if isinstance(out, tuple):
            return list(zip(*[part.split(sizes) for part in out], strict=True))
        return list(out.split(sizes))

    def make_teacher(self) -> None:
        self.teacher = nn.ModuleDict({n: frozen_copy(getattr(self, n)) for n in self.teacher_pairs})

    def feature_encoder(self) -> nn.Module:
        return self.encoder

    def before_step(self, step: int) -> None:
        pass

    def after_update(self, step: int, total_steps: int) -> None:
        if self.teacher_pairs:
            m = momentum(self.kw["base_momentum"], step, total_steps)
            for name in self.teacher_pairs:
                update_momentum(getattr(self, name), self.teacher[name], m)


class TwoView(Method):
    """The joint-embedding methods' shared part (ssl_jax's
    `JointEmbeddingTask`): two views, and the optional online linear probe on
    the first view's stop-gradient features (`num_classes`), whose loss is
    added to the method's."""

    common = {"views", "num_classes", "head_init"}

    def setup_views(self, *heads: nn.Module) -> None:
        for head in heads:
            models.init_linears(head, self.kw.get("head_init", "torch"))
        self.views = views.views_of(self.kw["views"], self.image_size)
        classes = self.kw.get("num_classes") or 0
        self.online_probe = lecun_linear(self.encoder.feature_dim, classes) if classes else None

    def finish(self, loss, metrics: dict, features: torch.Tensor, labels: torch.Tensor):
        metrics = {"method_loss": loss.item(), **metrics}
        if self.online_probe is not None:
            probe = F.cross_entropy(self.online_probe(features.detach()), labels)
            metrics["online_probe_loss"] = probe.item()
            loss = loss + probe
        return loss, metrics


class BYOL(TwoView):
    implemented = TwoView.common | {"projection_hidden_dim", "projection_dim"}
    implemented |= {"prediction_hidden_dim", "base_momentum"}
    teacher_pairs = ("encoder", "projector")

    def __init__(self, config, encoder, **kw):
        super().__init__("byol", config, encoder, **kw)
        k, d, p = self.kw, encoder.feature_dim, self.kw["projection_dim"]
        self.projector = BYOLProjectionHead(d, k["projection_hidden_dim"], p)
        self.predictor = BYOLPredictionHead(p, k["prediction_hidden_dim"], p)
        self.setup_views(self.projector, self.predictor)
        self.make_teacher()
        self.criterion = NegativeCosineSimilarity()

    def loss(self, images, labels, step):
        x = [view(images) for view in self.views]

        def online(v):
            features = self.encoder(v)
            return features, self.predictor(self.projector(features))

        (f1, p1), (_, p2) = self.each(online, x)
        with torch.no_grad():
            z1, z2 = self.each(lambda v: self.teacher["projector"](self.teacher["encoder"](v)), x)
        # ssl_jax's byol_loss: 2 - 2 cos, both directions summed.
        loss = 4.0 + 2.0 * (self.criterion(p1, z2) + self.criterion(p2, z1))
        return self.finish(loss, {}, f1, labels)


class SimSiam(TwoView):
    implemented = TwoView.common | {"projection_dim", "prediction_hidden_dim"}

    def __init__(self, config, encoder, **kw):
        super().__init__("simsiam", config, encoder, **kw)
        k, d, p = self.kw, encoder.feature_dim, self.kw["projection_dim"]
        self.projector = SimSiamProjectionHead(d, p, p)
        self.predictor = SimSiamPredictionHead(p, k["prediction_hidden_dim"], p)
        self.setup_views(self.projector, self.predictor)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, images, labels, step):
        def network(v):
            features = self.encoder(v)
            z = self.projector(features)
            return features, z, self.predictor(z)

        (f1, z1, p1), (_, z2, p2) = self.each(network, [view(images) for view in self.views])
        loss = 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))
        return self.finish(loss, {}, f1, labels)


class BarlowTwins(TwoView):
    implemented = TwoView.common | {"projection_dims", "lambd", "loss_scale"}

    def __init__(self, config, encoder, **kw):
        super().__init__("barlow_twins", config, encoder, **kw)
        self.projector = models.mlp(
            [encoder.feature_dim, *self.kw["projection_dims"]], last_bias=False
        )
        self.setup_views(self.projector)
        self.criterion = BarlowTwinsLoss(lambda_param=self.kw["lambd"])

    def loss(self, images, labels, step):
        def network(v):
            features = self.encoder(v)
            return features, self.projector(features)

        (f1, z1), (_, z2) = self.each(network, [view(images) for view in self.views])
        loss = self.kw["loss_scale"] * self.criterion(z1, z2)
        return self.finish(loss, {}, f1, labels)


class VICReg(TwoView):
    implemented = TwoView.common | {"expander_dims", "invariance_weight", "variance_weight"}
    implemented |= {"covariance_weight"}

    def __init__(self, config, encoder, **kw):
        super().__init__("vicreg", config, encoder, **kw)
        k = self.kw
        self.expander = models.mlp([encoder.feature_dim, *k["expander_dims"]], last_bias=False)
        self.setup_views(self.expander)
        self.criterion = VICRegLoss(
            lambda_param=k["invariance_weight"],
            mu_param=k["variance_weight"],
            nu_param=k["covariance_weight"],
        )

    def loss(self, images, labels, step):
        def network(v):
            features = self.encoder(v)
            return features, self.expander(features)

        (f1, z1), (_, z2) = self.each(network, [view(images) for view in self.views])
        return self.finish(self.criterion(z1, z2), {}, f1, labels)


def moco_v3_contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of each query against the batch's keys (positives on the
    diagonal), times 2 tau, as MoCo v3's reference `ctr`."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    labels = torch.arange(len(q))
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


class MoCoV3(TwoView):
    implemented = TwoView.common | {"projection_hidden_dims", "projection_dim"}
    implemented |= {"prediction_hidden_dim", "temperature", "base_momentum", "predictor_last_norm"}
    teacher_pairs = ("encoder", "projector")

    def __init__(self, config, encoder, **kw):
        super().__init__("moco_v3", config, encoder, **kw)
        k, p = self.kw, self.kw["projection_dim"]
        dims = [encoder.feature_dim, *k["projection_hidden_dims"], p]
        self.projector = models.mlp(dims, last_norm="plain")
        last = "plain" if k["predictor_last_norm"] else None
        self.predictor = models.mlp([p, k["prediction_hidden_dim"], p], last_norm=last)
        self.setup_views(self.projector, self.predictor)
        self.make_teacher()

    def loss(self, images, labels, step):
        x = [view(images) for view in self.views]

        def query(v):
            features = self.encoder(v)
            return features, self.predictor(self.projector(features))

        (f1, q1), (_, q2) = self.each(query, x)
        with torch.no_grad():
            k1, k2 = self.each(lambda v: self.teacher["projector"](self.teacher["encoder"](v)), x)
        t = self.kw["temperature"]
        loss = moco_v3_contrastive(q1, k2, t) + moco_v3_contrastive(q2, k1, t)
        return self.finish(loss, {}, f1, labels)


class SimCLR(Method):
    implemented = {"projection_hidden_dims", "projection_dim", "temperature", "num_classes"}
    implemented |= {"views"}

    def __init__(self, config, encoder, **kw):
        super().__init__("simclr", config, encoder, **kw)
        k, d = self.kw, encoder.feature_dim
        self.views = views.views_of(k["views"], self.image_size)
        self.projection = models.simclr_head(d, k["projection_hidden_dims"], k["projection_dim"])
        models.init_linears(self.projection, "lecun")  # ssl_jax's nnx.Linear default
        self.criterion = NTXentLoss(temperature=k["temperature"])
        classes = k["num_classes"]
        self.online_probe = lecun_linear(d, classes) if classes else None

    def loss(self, images, labels, step):
        n = len(images)
        features = self.encoder(torch.cat([view(images) for view in self.views]))
        z = self.projection(features)
        loss = self.criterion(z[:n], z[n:])
        metrics = {"contrastive_loss": loss.item()}
        if self.online_probe is not None:
            probe = F.cross_entropy(self.online_probe(features[:n].detach()), labels)
            metrics["online_probe_loss"] = probe.item()
            loss = loss + probe
        return loss, metrics


class Rotation(Method):
    implemented = {"head_hidden_dims", "crop_padding", "flip"}

    def __init__(self, config, encoder, **kw):
        super().__init__("rotation", config, encoder, **kw)
        self.head = models.mlp([encoder.feature_dim, *self.kw["head_hidden_dims"], 4])
        models.init_linears(self.head, "lecun")  # ssl_jax's MLPHead: nnx.Linear's default

    def loss(self, images, labels, step):
        x = views.crop_and_flip(
            images.float() / 255.0, crop_padding=self.kw["crop_padding"], flip=self.kw["flip"]
        )
        rotated, targets = views.rotations(x)
        logits = self.head(self.encoder(views.normalize(rotated)))
        accuracy = (logits.argmax(1) == targets).float().mean().item()
        return F.cross_entropy(logits, targets), {"rotation_accuracy": accuracy}
