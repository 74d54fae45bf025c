"""Import-time stand-in for TensorFlow, put on PYTHONPATH by check.sh only where TensorFlow is not
installed (an offline GPU image with JAX but no TensorFlow). selfsup's modules use TensorFlow only
inside the host input pipeline; experiments/bench/train_step.py and gpu_sanity.py import those
modules but never run the pipeline, so attribute lookups, calls and subclassing only have to
succeed at import time. Nothing here computes: the CLI (`python -m selfsup`) cannot run on this
stub."""

SELFSUP_STUB = True
__version__ = "0+selfsup-stub"


class _Stub:
    """Every attribute, call and subscript is another stub; a stub can be a base class."""

    def __init__(self, *args, **kwargs):
        pass

    def __init_subclass__(cls, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub()

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __getitem__(self, key):
        return _Stub()

    def __mro_entries__(self, bases):
        return (_Stub,)


class Tensor(_Stub):
    """Used in module-level type aliases (`Callable[[tf.Tensor], tf.Tensor]`)."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Stub()
