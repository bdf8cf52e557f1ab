"""The configured training objective: weighted label losses + distillation to a teacher target.

An :class:`Objective` is data (parsed from the ``objective:`` YAML section)::

    objective:
      label_losses: {pairwise_logistic: 1.0}      # loss name -> weight, on batch["labels"]
      distill_losses: {margin_mse: 1.0}           # loss name -> weight, on the teacher target
      target: ensemble                            # ensemble | precomputed | teacher
      ensemble: {name: pile}                      # + options passed to pile_jax.ensemble.ensemble
      teacher_index: null                         # int -> distil from that single teacher
      temperature: 2.0                            # given to distill losses taking `temperature`
      loss_options: {listwise_kl: {temperature: 4.0}}   # per-loss keyword options (win)
      aux_losses: {}                              # name -> weight for score_fn's aux losses

Absent teacher scores: a batch may carry ``teacher_mask bool [B, T, n]`` (False = teacher t did not
score item i; missing = every real item scored). The ensembles get it as ``teacher_where`` and
ignore absent scores; the distillation terms use only the items with a target
(:func:`distill_mask`: for ``target: ensemble`` an item some teacher scores, for ``target:
teacher`` an item that teacher scores), so an item no teacher scored gets no distillation loss.

Reduction: every term is a per-list mean (over the list's valid items/pairs, the loss's own
``reduce_fn=jnp.mean`` on one list), then a mean over the lists that have at least one valid
item. Each ranking group therefore weighs the same, and the value does not depend on how the
batch is split across devices or micro-batches (the train step passes global denominators).
All losses are computed in float32.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from pile_jax.config import Checker, ConfigError, did_you_mean

__all__ = [
    "Objective", "as_objective", "resolve_target", "term_denominators", "compute_loss",
    "TARGETS", "distill_mask",
]

TARGETS = ("ensemble", "precomputed", "teacher")


def _losses_registry() -> Mapping[str, Any]:
    """name -> :class:`pile_jax.losses.LossSpec` (function, target kind, bound defaults)."""
    from pile_jax import losses
    return losses.LOSS_REGISTRY


def _ensemble_module():
    from pile_jax import ensemble
    return ensemble


@dataclasses.dataclass(frozen=True)
class Objective:
    """Training objective as data; build with :meth:`from_config` (validates names)."""

    label_losses: Mapping[str, float] = dataclasses.field(default_factory=dict)
    distill_losses: Mapping[str, float] = dataclasses.field(default_factory=dict)
    target: str = "ensemble"
    ensemble: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"name": "pile"})
    teacher_index: int | None = None
    temperature: float | None = None
    loss_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    aux_losses: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "Objective" | None) -> "Objective":
        """Parses the ``objective:`` section; raises ConfigError naming the bad key."""
        if isinstance(cfg, Objective):
            cfg.validate()
            return cfg
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"objective: unknown key(s) {unknown} (known: {sorted(known)})")
        kwargs = {}
        for key in ("label_losses", "distill_losses", "aux_losses"):
            value = cfg.get(key) or {}
            if isinstance(value, str):
                value = {value: 1.0}
            if not isinstance(value, Mapping):
                raise ConfigError(f"objective.{key}: must map loss name -> weight, got {value!r}")
            try:
                kwargs[key] = {str(k): float(v) for k, v in value.items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"objective.{key}: weights must be numbers ({e})") from e
        teacher_index = cfg.get("teacher_index")
        target = cfg.get("target")
        if target is None:
            target = "teacher" if teacher_index is not None else "ensemble"
        kwargs["target"] = str(target)
        ens = cfg.get("ensemble", {"name": "pile"})
        if isinstance(ens, str):
            ens = {"name": ens}
        kwargs["ensemble"] = dict(ens or {})
        kwargs["teacher_index"] = None if teacher_index is None else int(teacher_index)
        temp = cfg.get("temperature")
        kwargs["temperature"] = None if temp is None else float(temp)
        kwargs["loss_options"] = {str(k): dict(v or {}) for k, v in (cfg.get("loss_options") or {}).items()}
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Checks loss/ensemble names and the target mode; raises ConfigError."""
        if not (self.label_losses or self.distill_losses or self.aux_losses):
            raise ConfigError("objective: no loss terms (set label_losses and/or distill_losses)")
        registry = _losses_registry()
        for key in ("label_losses", "distill_losses"):
            for name in getattr(self, key):
                if name not in registry:
                    raise ConfigError(
                        f"objective.{key}: unknown loss {name!r} (known: {sorted(registry)})")
        for name in self.loss_options:
            if name not in registry:
                raise ConfigError(f"objective.loss_options: unknown loss {name!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"objective.target: must be one of {TARGETS}, got {self.target!r}")
        if self.target == "teacher" and self.teacher_index is None:
            raise ConfigError("objective.teacher_index: required when target is 'teacher'")
        if self.teacher_index is not None and self.target != "teacher":
            raise ConfigError(
                f"objective.teacher_index: set, but target is {self.target!r} (use target: teacher)")
        if self.distill_losses and self.target == "ensemble":
            name = self.ensemble.get("name")
            registry_e = _ensemble_module().ENSEMBLES
            if name not in registry_e:
                raise ConfigError(
                    f"objective.ensemble.name: unknown ensemble {name!r} (known: {sorted(registry_e)})")

    def term_names(self) -> list[str]:
        """Metric names of the configured terms ("label/<loss>", "distill/<loss>", "aux/<name>")."""
        return ([f"label/{n}" for n in self.label_losses]
                + [f"distill/{n}" for n in self.distill_losses]
                + [f"aux/{n}" for n in self.aux_losses])


def as_objective(objective: Objective | Mapping[str, Any]) -> Objective:
    """An :class:`Objective` from an Objective or a config mapping."""
    return objective if isinstance(objective, Objective) else Objective.from_config(objective)


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _masks(batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    mask = jnp.asarray(batch["mask"]).astype(bool)
    label_mask = batch.get("label_mask")
    label_mask = mask if label_mask is None else (mask & jnp.asarray(label_mask).astype(bool))
    return mask, label_mask


def _teacher_mask(batch: Mapping[str, Any], mask: jax.Array) -> jax.Array | None:
    """``teacher_mask & mask`` ``[B, T, n]``, or None when the batch has no teacher_mask."""
    tm = batch.get("teacher_mask")
    if tm is None:
        return None
    return jnp.asarray(tm).astype(bool) & mask[:, None, :]


def distill_mask(batch: Mapping[str, Any], objective: Objective | Mapping[str, Any]) -> jax.Array:
    """``[B, n]`` bool: the items the distillation terms use -- ``mask``, and with a
    ``teacher_mask``: an item at least one teacher scores (``target: ensemble``), an item teacher
    ``teacher_index`` scores (``target: teacher``). ``target: precomputed``: ``mask``."""
    obj = as_objective(objective)
    mask = jnp.asarray(batch["mask"]).astype(bool)
    tm = _teacher_mask(batch, mask)
    if tm is None or obj.target == "precomputed":
        return mask
    if obj.target == "teacher":
        return tm[:, obj.teacher_index, :]
    return jnp.any(tm, axis=1)


def resolve_target(batch: Mapping[str, Any], objective: Objective | Mapping[str, Any]) -> jax.Array | None:
    """The distillation target ``[B, n]`` (float32, under stop_gradient), or None if unused.

    "ensemble": ``pile_jax.ensemble.ensemble(name, teacher_scores^T [T,B,n], labels,
    where=mask, **options)``, label-supervised ensembles with ``label_where=label_mask`` (items
    outside it, e.g. unjudged under "ignore", are in no labelled pair);
    "teacher": ``teacher_scores[:, teacher_index]``;
    "precomputed": ``batch["target"]``. Padded items (``mask`` False) are zeroed first; with a
    ``teacher_mask`` the ensemble gets ``teacher_where`` and absent scores are zeroed (items
    outside :func:`distill_mask` get target 0 and no loss).
    """
    obj = as_objective(objective)
    if not obj.distill_losses:
        return None
    mask = jnp.asarray(batch["mask"]).astype(bool)
    if obj.target == "precomputed":
        if "target" not in batch:
            raise KeyError("objective.target is 'precomputed' but the batch has no 'target'")
        target = jnp.where(mask, _f32(batch["target"]), 0.0)
    else:
        if "teacher_scores" not in batch:
            raise KeyError(f"objective.target is {obj.target!r} but the batch has no 'teacher_scores'")
        teachers = _f32(batch["teacher_scores"])  # [B, T, n]
        tm = _teacher_mask(batch, mask)
        teachers = jnp.where(mask[:, None, :] if tm is None else tm, teachers, 0.0)
        if obj.target == "teacher":
            num_t = teachers.shape[1]
            if not -num_t <= obj.teacher_index < num_t:
                raise ValueError(f"teacher_index {obj.teacher_index} out of range for {num_t} teachers")
            target = teachers[:, obj.teacher_index, :]
        else:
            options = dict(obj.ensemble)
            name = options.pop("name")
            # label-supervised ensembles pair only items in label_mask (unjudged items under
            # unjudged="ignore" are ensembled but take part in no labelled pair)
            _, label_mask = _masks(batch)
            labels = jnp.where(label_mask, _f32(batch["labels"]), 0.0)
            E = _ensemble_module()
            if name in E.LABEL_ENSEMBLES:
                options["label_where"] = label_mask
            if tm is not None:
                options["teacher_where"] = jnp.transpose(tm, (1, 0, 2))
            target = E.ensemble(name, jnp.transpose(teachers, (1, 0, 2)), labels, where=mask, **options)
            if isinstance(target, tuple):
                target = target[0]
            target = _f32(target)
    return jax.lax.stop_gradient(target)


def term_denominators(batch: Mapping[str, Any], objective: Objective | Mapping[str, Any]) -> dict[str, jax.Array]:
    """Number of lists taking part in label / distill terms (float32 scalars, this batch)."""
    mask, label_mask = _masks(batch)
    dmask = distill_mask(batch, objective) if as_objective(objective).distill_losses else mask
    return {
        "label": jnp.sum(jnp.any(label_mask, axis=-1)).astype(jnp.float32),
        "distill": jnp.sum(jnp.any(dmask, axis=-1)).astype(jnp.float32),
    }


def _loss_kwargs(spec, name: str, obj: Objective, distill: bool) -> dict[str, Any]:
    """The spec's defaults, then ``objective.temperature`` (distill losses taking one), then
    ``objective.loss_options[name]``: later ones win."""
    kwargs = dict(spec.defaults)
    if distill and obj.temperature is not None:
        try:
            params = inspect.signature(spec.fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "temperature" in params:
            kwargs["temperature"] = obj.temperature
    kwargs.update(obj.loss_options.get(name, {}))
    return kwargs


def _per_list_sum(fn, scores, ref, where, kwargs) -> jax.Array:
    """Sum over lists of the per-list mean loss (lists without valid items contribute 0)."""
    per_list = jax.vmap(lambda s, r, w: fn(s, r, where=w, reduce_fn=jnp.mean, **kwargs))(scores, ref, where)
    per_list = _f32(per_list)
    has_item = jnp.any(where, axis=-1)
    return jnp.sum(jnp.where(has_item, per_list, 0.0))


def compute_loss(
    scores: jax.Array,
    batch: Mapping[str, Any],
    objective: Objective | Mapping[str, Any],
    *,
    aux_losses: Mapping[str, jax.Array] | None = None,
    target: jax.Array | None = None,
    denominators: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted objective for student ``scores [B, n]`` -> ``(loss, {term: unweighted value})``.

    Label losses use ``where=mask & label_mask`` against ``batch["labels"]``; distill losses
    use ``where=`` :func:`distill_mask` (``mask`` without a ``teacher_mask``) against the target (``target`` if given, else :func:`resolve_target`).
    ``aux_losses`` (scalars from ``score_fn``) are weighted by ``objective.aux_losses``.
    ``denominators`` ({"label", "distill"} list counts) default to this batch's counts; the
    train step passes global counts so micro-batch/device partial sums add up exactly.
    """
    obj = as_objective(objective)
    registry = _losses_registry()
    scores = _f32(scores)
    mask, label_mask = _masks(batch)
    if denominators is None:
        denominators = term_denominators(batch, obj)
    terms: dict[str, jax.Array] = {}
    loss = jnp.zeros((), jnp.float32)
    if obj.label_losses:
        labels = jnp.where(mask, _f32(batch["labels"]), 0.0)
        den = jnp.maximum(denominators["label"], 1.0)
        for name, weight in obj.label_losses.items():
            spec = registry[name]
            value = _per_list_sum(spec.fn, scores, labels, label_mask,
                                  _loss_kwargs(spec, name, obj, False)) / den
            terms[f"label/{name}"] = value
            loss = loss + weight * value
    if obj.distill_losses:
        if target is None:
            target = resolve_target(batch, obj)
        target = jax.lax.stop_gradient(_f32(target))
        den = jnp.maximum(denominators["distill"], 1.0)
        dmask = distill_mask(batch, obj)
        for name, weight in obj.distill_losses.items():
            spec = registry[name]
            value = _per_list_sum(spec.fn, scores, target, dmask,
                                  _loss_kwargs(spec, name, obj, True)) / den
            terms[f"distill/{name}"] = value
            loss = loss + weight * value
    aux_losses = dict(aux_losses or {})
    for name, weight in obj.aux_losses.items():
        if name not in aux_losses:
            raise KeyError(
                f"objective.aux_losses names {name!r} but score_fn returned {sorted(aux_losses)}")
        value = _f32(aux_losses[name])
        terms[f"aux/{name}"] = value
        loss = loss + weight * value
    return loss, terms


# ------------------------------------------------------------------------------ schema fragments
def check_ensemble(name: Any, options: Mapping[str, Any], where: str, source: str = "config",
                   trial: bool = True, name_key: str | None = None) -> None:
    """An ensemble name of :data:`pile_jax.ensemble.ENSEMBLES` with options its function takes,
    and (``trial``) values it accepts: it is run once on a tiny list."""
    import inspect

    import numpy as np

    from pile_jax import ensemble as E

    c = Checker(source)
    if name not in E.ENSEMBLES:
        c.fail(name_key or f"{where}.name",
               f"unknown ensemble {name!r}{did_you_mean(str(name), E.ENSEMBLES)} (known: {', '.join(E.ENSEMBLES)})")
    params = inspect.signature(E.ENSEMBLES[name]).parameters
    known = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in ("where", "label_where", "teacher_where")]
    c.keys(options, where, known)
    if trial and options:
        ts = np.array([[[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]], np.float32)
        try:
            E.ensemble(name, ts, np.array([[1.0, 0.0, 0.0]], np.float32), **dict(options))
        except (ValueError, TypeError) as e:
            c.fail(where, f"bad option value for {name}: {e}")


def check_objective(node: Any, path: str, source: str = "config", *, teacher: Iterable[str] = ()) -> dict:
    """An objective section (:class:`pile_jax.train.objective.Objective` keys, loss and ensemble
    names and options, plus ``teacher`` when ``teacher`` lists the values it may take)."""
    c = Checker(source)
    allowed = [f.name for f in dataclasses.fields(Objective)] + (["teacher"] if teacher else [])
    node = c.section(node, path, allowed, required=True)
    obj = dict(node)
    if "teacher" in obj:
        t = obj.pop("teacher")
        teacher = list(teacher)
        if t not in teacher:
            c.fail(f"{path}.teacher", f"unknown teacher {t!r}{did_you_mean(str(t), teacher)} "
                                      f"(known: {', '.join(teacher)})")
        obj["target"], obj["teacher_index"] = "teacher", 0
    from pile_jax.losses import LOSS_REGISTRY

    for key in ("label_losses", "distill_losses", "loss_options"):
        if isinstance(obj.get(key), Mapping):
            for loss in obj[key]:
                if loss not in LOSS_REGISTRY:
                    c.fail(f"{path}.{key}", f"unknown loss {loss!r}{did_you_mean(str(loss), LOSS_REGISTRY)} "
                                            f"(known: {', '.join(sorted(LOSS_REGISTRY))})")
    try:
        parsed = Objective.from_config(obj)
    except ConfigError as e:
        msg = str(e)
        msg = msg[len("objective"):] if msg.startswith("objective") else ": " + msg
        raise ConfigError(f"{source}: {path}{msg}") from None
    if parsed.distill_losses and parsed.target == "ensemble":
        opts = dict(parsed.ensemble)
        check_ensemble(opts.pop("name", None), opts, f"{path}.ensemble", source)
    return node
