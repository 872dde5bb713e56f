"""Token-eviction policies: one small class each, one registry (adding a policy = one new class
in rules.py and one line here)."""

from kvcache.policies.base import EvictionPolicy, SlotState, select_evictions
from kvcache.policies.rules import H2O, TOVA, Full, KNorm, Random, SnapKV, Streaming, Window

POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (Full, Window, Streaming, H2O, TOVA, SnapKV, Random, KNorm)
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def make_policy(name: str, **options) -> EvictionPolicy:
    """A policy by name; unknown names and options get an error that lists the valid ones."""
    if name not in POLICIES:
        raise ValueError(f"unknown eviction policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    cls = POLICIES[name]
    try:
        return cls(**options)
    except TypeError as e:
        import dataclasses

        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        raise ValueError(f"policy {name!r}: {e}; options: {', '.join(valid)}") from None


__all__ = ["EvictionPolicy", "SlotState", "select_evictions", "POLICIES", "POLICY_NAMES", "make_policy"]
