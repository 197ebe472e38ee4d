"""``@message`` (bot/domain/message.py): its faster ``__init__`` and ``evolve`` must build what
``dataclasses.dataclass(frozen=True, slots=True)`` builds, for every message in ``bot.domain``."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

import bot.domain as domain
from bot.domain import evolve, message

MESSAGES = sorted((c for c in vars(domain).values() if isinstance(c, type)
                   and dataclasses.is_dataclass(c) and "__evolve__" in vars(c)),
                  key=lambda c: c.__name__)


def _reference(cls: type) -> type:
    """The same fields, made by dataclasses alone."""
    fields = dataclasses.fields(cls)
    plain = type(cls.__name__, (), {"__annotations__": {f.name: f.type for f in fields},
                                    **{f.name: f for f in fields}})
    return dataclasses.dataclass(frozen=True, slots=True)(plain)


def test_every_domain_message_is_declared_with_message() -> None:
    assert len(MESSAGES) >= 30, [c.__name__ for c in MESSAGES]
    assert {"Candle", "Signal", "Order", "Fill", "Position", "AuditEvent"} <= {
        c.__name__ for c in MESSAGES}


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_message_init_and_evolve_match_dataclasses(cls: type) -> None:
    ref = _reference(cls)
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    values = {f.name: f"v-{f.name}" for f in fields}
    # positionally, by name, and with the defaults left out: field for field what the
    # dataclass's own __init__ sets
    made = [cls(*values.values()), cls(**values),
            cls(**{f.name: values[f.name] for f in required})]
    refs = [ref(*values.values()), ref(**values), ref(**{f.name: values[f.name] for f in required})]
    for m, r in zip(made, refs, strict=True):
        assert [getattr(m, f.name) for f in fields] == [getattr(r, f.name) for f in fields]
    assert made[0] == made[1] and hash(made[0]) == hash(made[1])
    assert pickle.loads(pickle.dumps(made[0])) == made[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made[0], fields[0].name, "x")
    with pytest.raises(TypeError):
        cls(**values, not_a_field=1)
    if required:
        with pytest.raises(TypeError):
            cls(**{f.name: values[f.name] for f in required[1:]})
    for f in fields:  # a default factory gives each object a value of its own
        if f.default_factory is not dataclasses.MISSING:
            a, b = (cls(**{r.name: values[r.name] for r in required}) for _ in range(2))
            assert getattr(a, f.name) == f.default_factory()
            if isinstance(getattr(a, f.name), (dict, list)):
                assert getattr(a, f.name) is not getattr(b, f.name)
    last = fields[-1].name
    assert evolve(made[0], **{last: "changed"}) == dataclasses.replace(made[0],
                                                                       **{last: "changed"})
    assert getattr(evolve(made[0], **{last: "changed"}), last) == "changed"
    assert evolve(made[0]) == made[0] and evolve(made[0]) is not made[0]
    with pytest.raises(TypeError, match="has no field 'nope'"):
        evolve(made[0], nope=1)


def test_a_message_refuses_what_it_cannot_build_fast() -> None:
    class Late:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="given to __init__"):
        message(Late)

    class Posted:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="no __post_init__"):
        message(Posted)
