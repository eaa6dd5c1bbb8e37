"""ssl_jax's optimizers (`ssl_jax/optim.py`) in PyTorch, on ssl_jax's own schedule.

- Parameter groups as the project masks them: weight decay (and LARS
  adaptation) only for parameters with ndim >= 2; biases and norms at
  `bias_lr_scale` times the learning rate; the top-level modules named in
  `optimizer.fixed_lr_modules` at the scaled peak learning rate throughout
  (`ssl_jax.optim.scaled_learning_rate`), the rest on
  `ssl_jax.optim.make_schedule`, evaluated each step: the values are the
  project's own.
- SGD and AdamW are torch's (the same update as optax's chains: decay added to
  the gradient before the momentum for SGD, decoupled for AdamW).
- LARS is written here, because both of ssl_jax's variants differ from
  lightly's: with `lars_clip` (LARC, solo-learn's) an adapted update u = g +
  wd w is scaled by min(eta ||w|| / ||u|| / lr, 1), then plain SGD momentum;
  without it, optax.lars: u scaled by eta ||w|| / ||u||, multiplied by the
  learning rate BEFORE the momentum trace.
- Gradient clipping before everything: the global norm, or each tensor
  (`grad_clip="per_tensor"`, DINO's reference).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_jax import optim as jax_optim


class LARS(torch.optim.Optimizer):
    """ssl_jax's LARS; groups with `adapt=False` (biases, norms) skip the
    trust ratio (their weight_decay is 0 too)."""

    def __init__(self, params, *, lr, momentum, nesterov, trust_coefficient, clip):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": 0.0,
            "trust_coefficient": trust_coefficient,
            "adapt": True,
            "clip": clip,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu, eta = group["lr"], group["momentum"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm, u_norm = torch.linalg.norm(p), torch.linalg.norm(u)
                    if group["clip"]:
                        ratio = eta * w_norm / torch.clamp(u_norm, min=1e-12)
                        factor = torch.clamp(ratio / max(lr, 1e-12), max=1.0)
                    else:
                        factor = eta * w_norm / u_norm
                    u = torch.where((w_norm > 0) & (u_norm > 0), u * factor, u)
                if not group["clip"]:
                    u = u * lr  # optax.lars: learning rate before the momentum
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = u.clone() if buf is None else buf.mul_(mu).add_(u)
                state["momentum_buffer"] = buf
                step = u.add(buf, alpha=mu) if group["nesterov"] else buf
                p.sub_(step, alpha=lr if group["clip"] else 1.0)


def trainable_groups(method: nn.Module, fixed_modules) -> dict[tuple[bool, bool], list]:
    """{(fixed, decayed): parameters} of the method's trainable parameters
    (requires_grad; a momentum teacher has none), by top-level attribute."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in method.named_parameters():
        if p.requires_grad:
            key = (name.split(".")[0] in fixed_modules, p.ndim > 1)
            groups.setdefault(key, []).append(p)
    return groups


class Optimizer:
    """The torch optimizer of `config.optimizer` for `method`, and the
    learning rates of each step (`set_step`)."""

    def __init__(self, opt, method: nn.Module, *, batch_size: int, total_steps: int):
        jax_optim.validate(opt)
        self.opt = opt
        self.schedule = jax_optim.make_schedule(opt, batch_size=batch_size, total_steps=total_steps)
        self.peak = jax_optim.scaled_learning_rate(opt, batch_size)
        if tuple(getattr(opt, "module_lr_scales", ()) or ()):
            raise ValueError("optimizer.module_lr_scales has no peer yet.")
        fixed_modules = tuple(getattr(opt, "fixed_lr_modules", ()) or ())
        modules = {name for name, _ in method.named_children()}
        unknown = set(fixed_modules) - modules
        if unknown:
            raise ValueError(f"optimizer.fixed_lr_modules {sorted(unknown)} not in {modules}.")
        groups = []
        for (fixed, decayed), params in sorted(trainable_groups(method, fixed_modules).items()):
            groups.append(
                {
                    "params": params,
                    "fixed": fixed,
                    "scale": 1.0 if decayed else opt.bias_lr_scale,
                    "weight_decay": opt.weight_decay if decayed else 0.0,
                    "adapt": decayed,
                }
            )
        self.params = [p for g in groups for p in g["params"]]
        if opt.name == "sgd":
            self.torch = torch.optim.SGD(
                groups, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov
            )
        elif opt.name == "adamw":
            self.torch = torch.optim.AdamW(groups, lr=0.0, betas=(opt.b1, opt.b2), eps=1e-8)
        elif opt.name == "lars":
            self.torch = LARS(
                groups,
                lr=0.0,
                momentum=opt.momentum,
                nesterov=opt.nesterov,
                trust_coefficient=opt.trust_coefficient,
                clip=opt.lars_clip,
            )
        else:
            raise ValueError(f"optimizer.name={opt.name!r} has no peer.")

    def learning_rate(self, step: int) -> float:
        """The scheduled learning rate of 0-based `step` (ssl_jax logs this one)."""
        return float(self.schedule(step))

    def set_step(self, step: int) -> None:
        scheduled = self.learning_rate(step)
        for group in self.torch.param_groups:
            group["lr"] = (self.peak if group["fixed"] else scheduled) * group["scale"]

    def clip(self) -> None:
        max_norm = self.opt.grad_clip_norm
        if not max_norm:
            return
        kind = getattr(self.opt, "grad_clip", "global_norm")
        grads = [p.grad for p in self.params if p.grad is not None]
        if kind == "global_norm":
            torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        elif kind == "per_tensor":
            for g in grads:
                g.mul_(torch.clamp(max_norm / torch.clamp(torch.linalg.norm(g), min=1e-6), max=1))
        else:
            raise ValueError(f"optimizer.grad_clip={kind!r} has no peer.")

    def step(self, step: int) -> None:
        """Clip, then update with the learning rates of 0-based `step`."""
        self.set_step(step)
        self.clip()
        self.torch.step()

    def zero_grad(self) -> None:
        self.torch.zero_grad(set_to_none=True)
