"""SwAV's peer (ssl_jax/tasks/swav.py) on lightly's SwaVLoss (Sinkhorn-Knopp
and the swapped prediction over multi-crop).

Student only: the encoder sees the 2 global crops in one call and the local
crops in another (the reference groups crops by resolution), the projection
MLP (ssl_jax's `heads.MLP`: Linear -> BatchNorm -> ReLU, then a Linear with a
bias) sees all crops at once, and its l2-normalised output is scored against
K unit-norm prototypes. The prototypes are a bias-free Linear layer (the
reference's; lightly's `SwaVPrototypes` has a bias, so it is not used),
drawn from a normal and scaled to unit rows (the same directions' law as
ssl_jax's Flax-default kernel), and put back to unit norm after every
update.

Written here, from the task's docstring and the reference
(facebookresearch/swav, main_swav.py):
- the freeze: while the run's progress (steps done / train_steps, float32 as
  ssl_jax keeps it) is below the fraction `optimizer.freeze` gives
  "prototypes", the prototypes' gradient is dropped (`grad = None`, so the
  optimizer skips them, as the reference) and they keep their initial values;
- the queue: the last `queue_length` embeddings of each global crop, filled
  from `queue_start_fraction` of the run and used once full (scored with the
  current prototypes and given to lightly's loss, which drops their codes).
The online linear probe reads the first global crop's features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss

from experiments.peers import models, views
from experiments.peers.methods import Method, frozen_fraction, lecun_linear


class SwAV(Method):
    implemented = {"global_views", "local_view", "num_local", "projection_hidden_dim"}
    implemented |= {"projection_dim", "num_prototypes", "temperature", "epsilon"}
    implemented |= {"sinkhorn_iterations", "freeze_prototypes_fraction", "queue_length"}
    implemented |= {"queue_start_fraction", "head_init", "num_classes"}

    def __init__(self, config, encoder, **kw):
        super().__init__("swav", config, encoder, **kw)
        self.kw["freeze_prototypes_fraction"] = frozen_fraction(config, "prototypes")
        k, self.total_steps = self.kw, config.train_steps
        hidden = [k["projection_hidden_dim"]] if k["projection_hidden_dim"] else []
        self.projector = models.mlp([encoder.feature_dim, *hidden, k["projection_dim"]])
        models.init_linears(self.projector, k["head_init"])
        self.prototypes = torch.nn.Linear(k["projection_dim"], k["num_prototypes"], bias=False)
        with torch.no_grad():
            torch.nn.init.normal_(self.prototypes.weight)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.register_buffer("initial_prototypes", self.prototypes.weight.detach().clone())
        self.global_views = views.views_of(k["global_views"], self.image_size)
        local = [k["local_view"]] * k["num_local"] if k["num_local"] else []
        self.local_views = views.views_of(local, self.image_size)
        self.criterion = SwaVLoss(
            temperature=k["temperature"],
            sinkhorn_iterations=k["sinkhorn_iterations"],
            sinkhorn_epsilon=k["epsilon"],
        )
        classes = k["num_classes"] or 0
        self.online_probe = lecun_linear(encoder.feature_dim, classes) if classes else None
        self.queue = torch.zeros(2, k["queue_length"], k["projection_dim"])
        self.queue_filled = 0

    def progress(self, step: int) -> np.float32:
        """The fraction of the run done before 0-based `step`, as ssl_jax keeps it."""
        return np.float32(step / max(self.total_steps, 1))

    def frozen(self, step: int) -> bool:
        return bool(self.progress(step) < np.float32(self.kw["freeze_prototypes_fraction"]))

    def loss(self, images, labels, step):
        n = len(images)
        features = self.encoder(torch.cat([view(images) for view in self.global_views]))
        crops = [features]
        if self.local_views:
            crops.append(self.encoder(torch.cat([view(images) for view in self.local_views])))
        z = F.normalize(self.projector(torch.cat(crops)), dim=1)
        scores = list(self.prototypes(z).split(n))
        queue_scores, metrics = self.queued_scores(z[: 2 * n].detach(), n, step)
        loss = self.criterion(scores[:2], scores[2:], queue_scores)
        metrics = {"swav_loss": loss.item(), **metrics}
        if self.online_probe is not None:
            probe = F.cross_entropy(self.online_probe(features[:n].detach()), labels)
            metrics["online_probe_loss"] = probe.item()
            loss = loss + probe
        return loss, metrics

    def queued_scores(self, embeddings: torch.Tensor, n: int, step: int):
        """The queue's scores (once it is full) for the loss, then this
        batch's global embeddings pushed in front (from the start fraction)."""
        length = self.queue.shape[1]
        if not length:
            return None, {}
        if length % n:
            raise ValueError(f"queue_length {length} must be a multiple of the batch size {n}.")
        in_use = self.queue_filled >= length
        scores = None
        if in_use:
            with torch.no_grad():
                scores = [self.prototypes(q) for q in self.queue]
        if self.progress(step) >= np.float32(self.kw["queue_start_fraction"]):
            pushed = embeddings.reshape(2, n, -1)
            self.queue = torch.cat([pushed, self.queue[:, :-n]], dim=1)
            self.queue_filled = min(self.queue_filled + n, length)
        return scores, {"queue_in_use": float(in_use)}

    def before_step(self, step: int) -> None:
        if self.frozen(step):
            self.prototypes.weight.grad = None

    def after_update(self, step: int, total_steps: int) -> None:
        with torch.no_grad():
            if self.frozen(step - 1):  # the update just made (0-based step - 1)
                self.prototypes.weight.copy_(self.initial_prototypes)
            else:
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
