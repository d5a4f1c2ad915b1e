"""The family registry: every feature looks its model or pipeline up here, by class name along the MRO.

A lookup walks the class's MRO from the class itself to its bases; at each class the first registered family that
lists it (and supports the feature) wins, so a family registered for a subclass is found before its base's, and a
model class shared by several families (SD 1.x/2.x and SDXL share UNet2DConditionModel) resolves to the first one
registered.
"""

from __future__ import annotations

from .family import FEATURES, Family

HOW_TO_ADD = (
    "to add a model family, register one with unbottle.register_family(unbottle.Family(...)); see the README's "
    "'Adding a model family'"
)

# the message an unsupported class gets, per feature ({cls}: its name, {families}: the families that support it)
_MESSAGES = {
    "sparse": "unbottle sparse attention does not support {cls}; supported families: {families}",
    "bottleneck": "unbottle.BottleneckSampler does not support {cls}; supported pipelines: {families}",
    "noise": "unbottle.NoiseSearch cannot optimize the noise of a {cls}; supported pipelines: {families}",
    "guidance": "structured guidance supports {families}; not {cls}",
}

_FAMILIES: list[Family] = []


class UnsupportedModelError(ValueError):
    """A model or pipeline no registered family supports for a feature; the message lists those that do."""


def _check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; expected one of {', '.join(FEATURES)}")


def _classes(family: Family, feature: str) -> tuple[str, ...]:
    return family.model_classes if feature == "sparse" else family.pipeline_classes


def registered_families(feature: str | None = None) -> tuple[Family, ...]:
    """The registered families in lookup order; with `feature`, only those that support it."""
    if feature is None:
        return tuple(_FAMILIES)
    _check_feature(feature)
    return tuple(f for f in _FAMILIES if f.supports(feature) and _classes(f, feature))


def family_named(name: str) -> Family:
    """The registered family called `name`, else a ValueError listing the registered names."""
    for family in _FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"no registered family {name!r}; registered: {', '.join(f.name for f in _FAMILIES)}")


def supported_families(feature: str) -> str:
    """"Name (Class/Class), ..." of the families supporting `feature`: model classes for sparse, else pipelines."""
    return ", ".join(f"{f.name} ({'/'.join(_classes(f, feature))})" for f in registered_families(feature))


def unsupported(cls_name: str, feature: str) -> UnsupportedModelError:
    """The error for a class no family supports for `feature`: names it, lists the families, says how to add one."""
    message = _MESSAGES[feature].format(cls=cls_name, families=supported_families(feature))
    return UnsupportedModelError(f"{message}; {HOW_TO_ADD}")


def _lookup(obj: object, feature: str | None, by_model: bool) -> Family | None:
    if feature is not None:
        _check_feature(feature)
    own = type(obj)
    for cls in own.__mro__:
        for family in _FAMILIES:
            classes = family.model_classes if by_model else family.pipeline_classes
            if cls.__name__ not in classes or (feature is not None and not family.supports(feature)):
                continue
            if feature == "guidance" and family.guidance.exact and cls is not own:
                continue  # this family's guidance takes its listed pipeline classes only, not subclasses
            return family
    return None


def _missing(cls_name: str, feature: str | None) -> UnsupportedModelError:
    if feature is not None:
        return unsupported(cls_name, feature)
    names = ", ".join(f.name for f in _FAMILIES)
    return UnsupportedModelError(f"no registered family lists {cls_name}; registered: {names}; {HOW_TO_ADD}")


def family_for_model(model: object, feature: str | None = "sparse", *, required: bool = True) -> Family | None:
    """The family of a denoiser (its class or a base class) that supports `feature` (None: any); unsupported: an
    UnsupportedModelError, or None when not `required`."""
    family = _lookup(model, feature, by_model=True)
    if family is None and required:
        raise _missing(type(model).__name__, feature)
    return family


def family_for_pipeline(pipe: object, feature: str | None, *, required: bool = True) -> Family | None:
    """The family of a pipeline (its class or a base class) that supports `feature` (None: any); unsupported: an
    UnsupportedModelError, or None when not `required`."""
    family = _lookup(pipe, feature, by_model=False)
    if family is None and required:
        raise _missing(type(pipe).__name__, feature)
    return family


def _conflict(new: Family, old: Family) -> str | None:
    """Why `new` cannot sit beside the registered `old`, or None."""
    if new.name == old.name:
        return f"the name {new.name!r} is registered"
    shared = sorted(set(new.pipeline_classes) & set(old.pipeline_classes))
    if shared:
        return f"{old.name!r} already lists the pipeline class {shared[0]}"
    shared = sorted(set(new.model_classes) & set(old.model_classes))
    if shared and new.attention is not None and old.attention is not None and new.attention != old.attention:
        return (f"{old.name!r} already lists the model class {shared[0]} with another attention part (families "
                "may share a model class only with the same SelfAttention)")  # fmt: skip
    return None


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Register `family` so that every feature sees it; `replace=True` first removes the families it conflicts with
    (same name, a shared pipeline class, or a shared model class with another attention part)."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family expects an unbottle.Family, got {type(family).__name__}")
    conflicts = [(old, why) for old in _FAMILIES if (why := _conflict(family, old)) is not None]
    if conflicts and not replace:
        raise ValueError(
            f"cannot register family {family.name!r}: {conflicts[0][1]}; pass replace=True to replace "
            f"{', '.join(repr(old.name) for old, _ in conflicts)}"
        )
    position = min((_FAMILIES.index(old) for old, _ in conflicts), default=len(_FAMILIES))
    for old, _ in conflicts:
        _FAMILIES.remove(old)
    _FAMILIES.insert(position, family)
    return family
