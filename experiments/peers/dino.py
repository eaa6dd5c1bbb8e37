"""DINO's peer (ssl_jax/tasks/dino.py) on lightly's DINOProjectionHead and DINOLoss.

Student: encoder + head on 2 global and `num_local` local crops (one encoder
call per crop size); teacher: an EMA copy of both, on the global crops, in
training mode (batch statistics), as ssl_jax's. The head is the reference's
(3-layer GELU MLP without batch norm, l2-normalised bottleneck,
weight-normalised prototypes of norm 1); lightly initialises the MLP as
ssl_jax's "dino" init (truncated normal, std 0.02), the prototypes are drawn
as ssl_jax's (truncated normal, std 0.02). `teacher_temperature_warmup` and
the prototypes' freeze (`optimizer.freeze` on "head/prototypes") are
fractions of the run, as in ssl_jax: the teacher
temperature rises linearly from `warmup_teacher_temperature` over that part
of the run, and the prototypes get no gradient while the run's progress
(steps done / train_steps, float32 as ssl_jax keeps it) is below that
fraction (lightly's `cancel_last_layer_gradients` with the
progress as its "epoch"). The loss centres with momentum `center_momentum`
after each loss. Features come from the teacher's encoder.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad

from experiments.peers import models, views
from experiments.peers.methods import Method, frozen_fraction


class DINO(Method):
    implemented = {"global_views", "local_view", "num_local", "out_dim", "hidden_dim"}
    implemented |= {"bottleneck_dim", "student_temperature", "teacher_temperature"}
    implemented |= {"warmup_teacher_temperature", "teacher_temperature_warmup"}
    implemented |= {"center_momentum", "base_momentum", "freeze_prototypes", "head_init"}
    implemented |= {"head_batch_norm"}
    teacher_pairs = ("encoder", "head")

    def __init__(self, config, encoder, **kw):
        super().__init__("dino", config, encoder, **kw)
        k, self.total_steps = self.kw, config.train_steps
        k["freeze_prototypes"] = frozen_fraction(config, "head/prototypes")
        self.head = self._head(encoder.feature_dim)
        # weight_norm's computed weight cannot be deep-copied: a new head, same values.
        teacher_head = self._head(encoder.feature_dim)
        teacher_head.load_state_dict(self.head.state_dict())
        teacher_encoder = copy.deepcopy(encoder)
        for module in (teacher_head, teacher_encoder):
            deactivate_requires_grad(module)
        self.teacher = torch.nn.ModuleDict({"encoder": teacher_encoder, "head": teacher_head})
        self.global_views = views.views_of(k["global_views"], self.image_size)
        self.local_views = views.views_of([k["local_view"]] * k["num_local"], self.image_size)
        self.criterion = DINOLoss(
            output_dim=k["out_dim"],
            student_temp=k["student_temperature"],
            center_momentum=k["center_momentum"],
        )

    def _head(self, in_dim: int) -> DINOProjectionHead:
        k = self.kw
        with warnings.catch_warnings():  # lightly's head uses the deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            head = DINOProjectionHead(
                in_dim,
                k["hidden_dim"],
                k["bottleneck_dim"],
                k["out_dim"],
                batch_norm=bool(k["head_batch_norm"]),
                freeze_last_layer=np.float32(k["freeze_prototypes"]),
                norm_last_layer=True,
            )
        if k["head_init"] != "dino":  # lightly's MLP init is ssl_jax's "dino"
            models.init_linears(head.layers, k["head_init"])
        with torch.no_grad():  # ssl_jax's prototypes
            torch.nn.init.trunc_normal_(head.last_layer.weight_v, std=0.02, a=-0.04, b=0.04)
        return head

    def progress(self, step: int) -> np.float32:
        """The fraction of the run done before 0-based `step`, as ssl_jax keeps it."""
        return np.float32(step / max(self.total_steps, 1))

    def teacher_temperature(self, step: int) -> float:
        """ssl_jax's: linear from the warm-up value to the final one over the
        first `teacher_temperature_warmup` of the run."""
        k, done = self.kw, self.progress(step)
        warmup = np.float32(k["teacher_temperature_warmup"])
        start, end = k["warmup_teacher_temperature"], k["teacher_temperature"]
        if done >= warmup:
            return end
        ramp = min(max(float(done) / max(float(warmup), 1e-9), 0.0), 1.0)
        return start + (end - start) * ramp

    def loss(self, images, labels, step):
        n = len(images)
        global_x = torch.cat([view(images) for view in self.global_views])
        student = list(self.head(self.encoder(global_x)).split(n))
        if self.local_views:
            local_x = torch.cat([view(images) for view in self.local_views])
            student += list(self.head(self.encoder(local_x)).split(n))
        with torch.no_grad():
            teacher = list(self.teacher["head"](self.teacher["encoder"](global_x)).split(n))
        temperature = self.teacher_temperature(step)
        loss = self.criterion(teacher, student, teacher_temp=temperature)
        return loss, {"teacher_temperature": temperature}

    def before_step(self, step: int) -> None:
        self.head.cancel_last_layer_gradients(self.progress(step))

    def feature_encoder(self):
        return self.teacher["encoder"]
