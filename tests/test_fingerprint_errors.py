"""Errors, strict mode, the pickle-reduction fallback and the user extension points.

Tests that could crash or hang a broken implementation (cycles, very deep nesting) run in a
child interpreter so that a stack overflow or an endless loop becomes a clean failure.
"""

from __future__ import annotations

import re
import threading
import warnings

import numpy as np
import pytest

import afml_cache
from afml_cache import CacheError, FingerprintError, fingerprint, register_fingerprint

SELF_REFERENCE = r"(?i)itself|cycl|self[- ]?referen|circular|recursive"


def user_warnings(record) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, UserWarning)]


# --------------------------------------------------------------------------- error class


def test_fingerprint_error_is_a_cache_error_and_a_type_error():
    assert issubclass(FingerprintError, CacheError)
    assert issubclass(FingerprintError, TypeError)
    assert afml_cache.FingerprintError is FingerprintError


def test_strict_is_keyword_only():
    with pytest.raises(TypeError):
        fingerprint(1, True)


# --------------------------------------------------------------------------- strict mode


def test_strict_mode_rejects_plain_user_class_naming_the_type():
    class Widget:
        pass

    with pytest.raises(FingerprintError, match="Widget") as excinfo:
        fingerprint(Widget(), strict=True)
    assert isinstance(excinfo.value, TypeError)
    assert "obj" in str(excinfo.value)


def test_strict_error_message_contains_the_path_to_the_offending_value():
    class Obj:
        pass

    with pytest.raises(FingerprintError) as excinfo:
        fingerprint((1, {"params": [0, 1, 2, Obj()]}), strict=True)
    message = str(excinfo.value)
    assert "obj[1]['params'][3]" in message
    assert "Obj" in message


@pytest.mark.parametrize(
    ("make_value", "path"),
    [
        (lambda bad: bad, "obj"),
        (lambda bad: [bad], "obj[0]"),
        (lambda bad: [0, (1, bad)], "obj[1][1]"),
        (lambda bad: {5: [bad]}, "obj[5][0]"),
        (lambda bad: {"a": {"b c": bad}}, "obj['a']['b c']"),
        (lambda bad: {(1, "k"): bad}, "obj[(1, 'k')]"),
    ],
    ids=["root", "list", "tuple-in-list", "int-key", "nested-str-keys", "tuple-key"],
)
def test_strict_error_path_rendering(make_value, path):
    class Gadget:
        pass

    with pytest.raises(FingerprintError) as excinfo:
        fingerprint(make_value(Gadget()), strict=True)
    message = str(excinfo.value)
    # The path must appear as a whole token, e.g. "obj[1]" must not be a prefix of "obj[1][1]".
    assert re.search(re.escape(path) + r"(?![\[\w])", message), message
    assert "Gadget" in message


def test_strict_mode_does_not_warn_before_raising():
    class Quiet:
        pass

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(FingerprintError):
            fingerprint([Quiet()], strict=True)
    assert user_warnings(record) == []


# --------------------------------------------------------------------------- unreducible objects


@pytest.mark.parametrize("strict", [False, True])
def test_lock_cannot_be_fingerprinted_even_non_strict(strict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # only the error is under test
        with pytest.raises(FingerprintError, match=r"(?i)lock") as excinfo:
            fingerprint([1, {"k": threading.Lock()}], strict=strict)
    assert "obj[1]['k']" in str(excinfo.value)


def test_generator_cannot_be_fingerprinted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(FingerprintError, match=r"(?i)generator"):
            fingerprint(x for x in range(3))


# --------------------------------------------------------------------------- cycles and depth


def test_list_containing_itself_raises_instead_of_crashing(run_python):
    run_python(
        f"""
        import pytest, afml_cache
        x = [1, 2]
        x.append(x)
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}) as e:
            afml_cache.fingerprint(x)
        assert isinstance(e.value, TypeError)
        assert "list" in str(e.value)
        """
    )


def test_dict_containing_itself_raises_instead_of_crashing(run_python):
    run_python(
        f"""
        import pytest, afml_cache
        d = {{"a": 1}}
        d["me"] = d
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}):
            afml_cache.fingerprint(d)
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}):
            afml_cache.fingerprint([0, {{"outer": d}}], strict=True)
        """
    )


def test_indirect_cycle_raises_instead_of_crashing(run_python):
    run_python(
        f"""
        import pytest, afml_cache
        a = []
        b = {{"a": a}}
        a.append((1, b))
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}):
            afml_cache.fingerprint(a)
        """
    )


def test_cycle_through_fallback_object_raises_instead_of_crashing(run_python):
    run_python(
        f"""
        import warnings, pytest, afml_cache
        warnings.simplefilter("ignore", UserWarning)
        class Node:
            pass
        n = Node()
        n.me = n
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}):
            afml_cache.fingerprint(n)
        """
    )


def test_cache_key_returning_self_raises_instead_of_looping(run_python):
    run_python(
        f"""
        import pytest, afml_cache
        class Loop:
            def __cache_key__(self):
                return [self]
        with pytest.raises(afml_cache.FingerprintError, match={SELF_REFERENCE!r}):
            afml_cache.fingerprint(Loop())
        """
    )


def test_deeply_nested_lists_fingerprint_without_recursion_error(run_python):
    run_python(
        """
        import afml_cache
        def nest(depth, leaf):
            x = leaf
            for _ in range(depth):
                x = [x]
            return x
        deep = afml_cache.fingerprint(nest(10_000, []))
        assert deep == afml_cache.fingerprint(nest(10_000, []))
        assert deep != afml_cache.fingerprint(nest(9_999, []))
        assert deep != afml_cache.fingerprint(nest(10_000, [1]))
        """
    )


def test_very_deeply_nested_tuples_and_dicts_fingerprint(run_python):
    run_python(
        """
        import afml_cache
        t = ()
        for _ in range(100_000):
            t = (t,)
        u = ()
        for _ in range(99_999):
            u = (u,)
        assert afml_cache.fingerprint(t) != afml_cache.fingerprint(u)
        d = {}
        for _ in range(10_000):
            d = {"k": d}
        afml_cache.fingerprint(d)
        """
    )


def test_deep_chain_of_cache_key_objects_fingerprints(run_python):
    run_python(
        """
        import afml_cache
        class Node:
            def __init__(self, child):
                self.child = child
            def __cache_key__(self):
                return (self.child,)
        def chain(depth, leaf):
            x = leaf
            for _ in range(depth):
                x = Node(x)
            return x
        assert afml_cache.fingerprint(chain(10_000, 0)) != afml_cache.fingerprint(chain(10_000, 1))
        """
    )


def test_deep_nesting_error_path_still_reports_the_type(run_python):
    run_python(
        """
        import pytest, afml_cache
        class Buried:
            pass
        x = Buried()
        for _ in range(5_000):
            x = [x]
        with pytest.raises(afml_cache.FingerprintError, match="Buried"):
            afml_cache.fingerprint(x, strict=True)
        """
    )


# --------------------------------------------------------------------------- fallback


def test_fallback_warns_and_hashes_the_reduction():
    class Holder:
        def __init__(self, a, b):
            self.a = a
            self.b = b

    with pytest.warns(UserWarning, match="Holder"):
        first = fingerprint(Holder(1, "x"))
    assert first == fingerprint(Holder(1, "x"))
    assert first != fingerprint(Holder(2, "x"))
    assert first != fingerprint(Holder(1, "y"))
    assert first != fingerprint({"a": 1, "b": "x"})


def test_fallback_ignores_attribute_insertion_order():
    class Attrs:
        pass

    one, two = Attrs(), Attrs()
    one.a, one.b = 1, 2
    two.b, two.a = 2, 1
    with pytest.warns(UserWarning):
        d1 = fingerprint(one)
    assert d1 == fingerprint(two)


def test_fallback_walks_state_canonically_so_set_order_does_not_matter():
    class Bag:
        def __init__(self, words):
            self.words = set(words)

    words = [f"w{i}" for i in range(300)]
    with pytest.warns(UserWarning):
        d1 = fingerprint(Bag(words))
    assert d1 == fingerprint(Bag(list(reversed(words))))


def test_fallback_uses_dedicated_rules_for_attributes():
    class WithArray:
        def __init__(self, arr):
            self.arr = arr

    a = np.arange(1000.0)
    b = a.copy()
    b[-1] = -1.0
    with pytest.warns(UserWarning):
        da = fingerprint(WithArray(a))
    assert da == fingerprint(WithArray(a.copy()))
    assert da == fingerprint(WithArray(np.asfortranarray(a)))
    assert da != fingerprint(WithArray(b))


def test_fallback_class_name_counts():
    class First:
        def __init__(self):
            self.v = 1

    class Second:
        def __init__(self):
            self.v = 1

    with pytest.warns(UserWarning):
        d1 = fingerprint(First())
    with pytest.warns(UserWarning):
        d2 = fingerprint(Second())
    assert d1 != d2


def test_fallback_handles_slots_and_custom_reduce():
    class Slotted:
        __slots__ = ("x",)

        def __init__(self, x):
            self.x = x

    class Reduced:
        def __init__(self, x):
            self.x = x

        def __reduce__(self):
            return (Reduced, (self.x,))

    with pytest.warns(UserWarning):
        s1 = fingerprint(Slotted(1))
    assert s1 != fingerprint(Slotted(2))
    with pytest.warns(UserWarning):
        r1 = fingerprint(Reduced(1))
    assert r1 != fingerprint(Reduced(2))


def test_fallback_warning_is_emitted_once_per_type():
    class Once:
        pass

    class Other:
        pass

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fingerprint(Once())
        fingerprint(Once())
        fingerprint([Once(), Once(), {"k": Once()}])
    once = user_warnings(record)
    assert len(once) == 1, [str(w.message) for w in once]
    assert "Once" in str(once[0].message)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fingerprint([Other(), Once(), Other()])
    other = user_warnings(record)
    assert len(other) == 1, [str(w.message) for w in other]
    assert "Other" in str(other[0].message)


# --------------------------------------------------------------------------- __cache_key__


def test_cache_key_is_honoured_and_only_its_result_counts():
    class Model:
        def __init__(self, params, scratch):
            self.params = params
            self.scratch = scratch  # not part of the key

        def __cache_key__(self):
            return {"params": self.params}

    base = fingerprint(Model([1, 2], scratch=object()), strict=True)  # strict: no fallback
    assert base == fingerprint(Model([1, 2], scratch="anything else"))
    assert base != fingerprint(Model([1, 3], scratch=None))


def test_cache_key_type_name_counts():
    class A:
        def __cache_key__(self):
            return 42

    class B:
        def __cache_key__(self):
            return 42

    assert fingerprint(A()) != fingerprint(B())
    assert fingerprint(A()) != fingerprint(42)


def test_cache_key_result_that_cannot_be_reduced_raises():
    class Leaky:
        def __cache_key__(self):
            return threading.Lock()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(FingerprintError):
            fingerprint(Leaky())


# --------------------------------------------------------------------------- register_fingerprint


def test_registered_rule_is_honoured_and_its_result_counts():
    class Quote:
        def __init__(self, bid, ask, note):
            self.bid, self.ask, self.note = bid, ask, note

    register_fingerprint(Quote, lambda q: (q.bid, q.ask))
    base = fingerprint(Quote(1.0, 1.5, "a"), strict=True)  # strict: the rule is a rule
    assert base == fingerprint(Quote(1.0, 1.5, "different note"))
    assert base != fingerprint(Quote(1.0, 1.6, "a"))
    assert base != fingerprint((1.0, 1.5))


def test_registered_rule_applies_to_subclasses():
    class Base:
        def __init__(self, v):
            self.v = v

    class Child(Base):
        pass

    register_fingerprint(Base, lambda o: o.v)
    assert fingerprint(Child(1), strict=True) == fingerprint(Child(1))
    assert fingerprint(Child(1)) != fingerprint(Child(2))


def test_most_specific_registered_rule_wins():
    class Base:
        def __init__(self, a, b):
            self.a, self.b = a, b

    class Child(Base):
        pass

    register_fingerprint(Base, lambda o: o.a)
    register_fingerprint(Child, lambda o: o.b)
    assert fingerprint(Child(1, 1)) != fingerprint(Child(1, 2))
    assert fingerprint(Child(1, 1)) == fingerprint(Child(2, 1))
    assert fingerprint(Base(1, 1)) == fingerprint(Base(1, 2))


def test_registered_type_name_counts():
    class Left:
        pass

    class Right:
        pass

    register_fingerprint(Left, lambda o: "same")
    register_fingerprint(Right, lambda o: "same")
    assert fingerprint(Left()) != fingerprint(Right())


def test_registered_rule_may_return_arrays_and_nested_values():
    class Signal:
        def __init__(self, values):
            self.values = values

    register_fingerprint(Signal, lambda s: {"values": s.values, "n": len(s.values)})
    a = np.arange(10.0)
    assert fingerprint(Signal(a)) == fingerprint(Signal(a.copy()))
    assert fingerprint(Signal(a)) != fingerprint(Signal(a + 1))


def test_registered_rule_returning_unfingerprintable_value_raises():
    class Wrapper:
        pass

    register_fingerprint(Wrapper, lambda o: threading.Lock())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(FingerprintError):
            fingerprint(Wrapper())
