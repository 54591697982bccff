"""The weighting namespace stays honest: private method modules, no module shadowed by a function,
a short public list whose names all resolve, the pure functions in one place, and the old import
paths still working for one release with a DeprecationWarning."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import warnings
from types import ModuleType

import pytest

import mtlkit.weighting as W
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting import functional
from mtlkit.weighting._deprecated import OLD_MODULES
from mtlkit.weighting.base import Weighting

#: the public modules of the package; every other module is private (``_name.py``)
PUBLIC_MODULES = {"base", "functional", "gradients"}
MAX_PUBLIC_NAMES = 45


def _modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(W.__path__)]


def test_every_module_but_the_public_few_is_private():
    names = _modules()
    assert PUBLIC_MODULES <= set(names)
    assert [n for n in names if not n.startswith("_") and n not in PUBLIC_MODULES] == []


@pytest.mark.parametrize("module", sorted(PUBLIC_MODULES))
def test_public_modules_import_as_modules_and_are_not_shadowed(module):
    path = f"mtlkit.weighting.{module}"
    assert isinstance(importlib.import_module(path), ModuleType)
    assert getattr(W, module) is sys.modules[path]  # the package attribute is that module, not a function


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_registered_method_lives_in_a_private_module_and_is_exported(name):
    cls = WEIGHTINGS.get(name)
    package, _, module = cls.__module__.rpartition(".")
    assert package == "mtlkit.weighting" and module.startswith("_"), cls.__module__
    assert isinstance(importlib.import_module(cls.__module__), ModuleType)
    assert cls.__name__ in W.__all__ and getattr(W, cls.__name__) is cls
    # no name of the package is both a module path and something else
    assert not hasattr(W, module) or isinstance(getattr(W, module), ModuleType)


def test_public_list_is_short_unique_and_resolves():
    assert len(W.__all__) <= MAX_PUBLIC_NAMES and len(set(W.__all__)) == len(W.__all__)
    for name in W.__all__:
        assert getattr(W, name) is not None, name
    assert {"Weighting", "WEIGHTINGS", "functional", "per_task_gradients", "meta_split"} <= set(W.__all__)
    assert W.WEIGHTINGS is WEIGHTINGS and W.Weighting is Weighting
    for name in W.__all__:  # no function name in the package list: they live in functional
        obj = getattr(W, name)
        assert not inspect.isfunction(obj) or name in {
            "per_task_gradients",
            "gramian",
            "write_gradients",
            "unflatten_like",
            "meta_split",
        }, name


def test_functional_holds_the_pure_functions_and_they_resolve():
    assert len(set(functional.__all__)) == len(functional.__all__)
    for name in functional.__all__:
        obj = getattr(functional, name)
        assert inspect.isfunction(obj), name
        assert obj.__module__.startswith("mtlkit.weighting."), (name, obj.__module__)
    # every gradient-level class's pure function of G: at least the mechanical cases are present
    for name in (
        "pcgrad",
        "pcgrad_weights",
        "mgda",
        "mgda_weights",
        "upgrad_weights",
        "cagrad_weights",
        "nash_mtl_weights",
        "aligned_mtl_weights",
        "dualproj_weights",
        "config",
        "gramian",
    ):
        assert name in functional.__all__


def test_every_pure_function_of_a_method_module_is_in_functional():
    """A method module's public functions (not its ``check_*`` option validators) are exported there."""
    for cls in {c for _, c in WEIGHTINGS.items()}:
        module = sys.modules[cls.__module__]
        defined = [
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v)
            and v.__module__ == module.__name__
            and not n.startswith(("_", "check_"))
            and n != "meta_split"
        ]
        assert sorted(set(defined) - set(functional.__all__)) == [], module.__name__


def test_old_function_names_on_the_package_warn_and_resolve():
    for name in set(functional.__all__) - set(W.__all__):
        with pytest.warns(DeprecationWarning, match=f"mtlkit.weighting.{name} is deprecated.*functional"):
            assert getattr(W, name) is getattr(functional, name)
    with pytest.warns(DeprecationWarning):
        from mtlkit.weighting import pcgrad  # the old spelling: the function
    assert pcgrad is functional.pcgrad


@pytest.mark.parametrize("old", OLD_MODULES)
def test_old_module_paths_warn_and_forward_to_the_private_module(old):
    private = importlib.import_module(f"mtlkit.weighting._{old}")
    proxy = importlib.import_module(f"mtlkit.weighting.{old}")
    classes = [
        n
        for n, v in vars(private).items()
        if inspect.isclass(v) and v.__module__ == private.__name__ and issubclass(v, Weighting)
    ]
    for name in classes:
        with pytest.warns(DeprecationWarning, match=f"mtlkit.weighting.{old}.{name} is deprecated"):
            assert getattr(proxy, name) is getattr(private, name)


def test_old_module_import_forms():
    with pytest.warns(DeprecationWarning, match="import it from mtlkit.weighting$"):
        from mtlkit.weighting.pcgrad import PCGrad
    assert PCGrad is W.PCGrad
    with pytest.warns(DeprecationWarning, match="import it from mtlkit.weighting.functional"):
        from mtlkit.weighting.dwa import dwa_weights
    assert dwa_weights is functional.dwa_weights
    with pytest.warns(DeprecationWarning, match="a module"):
        module = W.dwa  # an old module no function shadowed: still the module
    with pytest.warns(DeprecationWarning):
        assert module.DWA is W.DWA
    with pytest.raises(AttributeError):
        W.no_such_name  # noqa: B018


def test_importing_the_package_and_the_new_paths_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in [f"mtlkit.weighting.{m}" for m in _modules()]:
            importlib.import_module(module)
        for name in W.__all__:
            getattr(W, name)
        for name in functional.__all__:
            getattr(functional, name)


def test_capabilities_are_declared_on_the_base_class():
    assert Weighting.supports_distributed is True and Weighting.needs_meta_step is False
    assert isinstance(Weighting.distributed_note, str) and Weighting.distributed_note
    auto = WEIGHTINGS.get("auto_lambda")
    assert auto.needs_meta_step is True and auto.supports_distributed is False
    assert [n for n, c in WEIGHTINGS.items() if c.needs_meta_step] == ["auto_lambda"]
