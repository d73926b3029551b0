"""The model registry: :class:`ModelDef`, :func:`get_model`, :func:`available_models`.

A model definition couples a search space with a builder.  The space is a
function of the input shape so that a space never offers an architecture the
images are too small for; :meth:`ModelDef.build` turns one sampled point of
that space into an *uncompiled* ``keras.Model`` taking raw ``uint8`` images.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from mongotune.errors import ConfigError

#: what ``ModelDef.space(variant=...)`` accepts
SPACE_VARIANTS = ("auto", "seed", "small")

# marker for "the caller did not say how many coarse classes there are"
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


class ModelDef:
    """One entry of the model zoo.  Subclasses set the class attributes and
    implement :meth:`space` and :meth:`build`."""

    name: str = ""
    description: str = ""
    #: smallest height/width (pixels) the model can be built for
    min_input_size: int = 1
    #: channels the model's first layers want (None: any); a launch converts
    #: grayscale datasets to this many channels unless --channels says otherwise
    input_channels: int | None = None
    #: the model has a pre-trained part that it freezes (vggstrix)
    takes_weights: bool = False

    # -- the public entry points ---------------------------------------------

    def space(self, input_shape: tuple[int, int, int], *, augment: bool = False,
              variant: str = "auto") -> dict:
        """The hyperopt search space for images of ``input_shape`` (H, W, C).

        Always has the keys ``batch_size``, ``learning_rate`` and
        ``optimizer``.  ``augment=True`` merges in
        :func:`mongotune.models.augment.augmentation_space`.  Raises
        ConfigError when the images are too small for this model.

        ``variant``: ``"seed"`` is the space of the seed experiment the model
        comes from, ``"small"`` a narrower one for small inputs (models that
        have one, see :meth:`is_small_input`), ``"auto"`` picks ``"small"``
        exactly when :meth:`is_small_input` says so.
        """
        from mongotune.models._common import check_input_shape

        shape = check_input_shape(self.name, input_shape, self.min_input_size)
        chosen = self.space_variant(shape, variant)
        space = self._small_space(shape) if chosen == "small" else self._space(shape)
        if augment:
            from mongotune.models.augment import with_augmentation

            space = with_augmentation(space)
        return space

    def build(self, params: dict, input_shape: tuple[int, int, int], num_classes: int, *,
              num_coarse_classes: int | None = None, weights: str | None = None):
        """An uncompiled ``keras.Model`` for one point of :meth:`space`.

        The model takes raw ``uint8`` images of ``input_shape``.  Invalid
        params (missing keys, values out of range, an architecture the image
        size cannot carry) raise ConfigError.
        """
        from mongotune.models._common import Params, check_input_shape, check_num_classes

        shape = check_input_shape(self.name, input_shape, self.min_input_size)
        n = check_num_classes(self.name, num_classes)
        coarse = None
        if num_coarse_classes is not None:
            coarse = check_num_classes(self.name, num_coarse_classes, "num_coarse_classes")
        model = self._build(Params(self.name, params), shape, n, num_coarse_classes=coarse,
                            weights=weights)
        self._remember_heads(params, list(model.output_names))
        return model

    def space_variant(self, input_shape: tuple[int, int, int], variant: str = "auto") -> str:
        """``"seed"`` or ``"small"``: which space :meth:`space` uses for ``input_shape``."""
        if variant not in SPACE_VARIANTS:
            raise ConfigError(f"{self.name}: unknown space variant {variant!r}; "
                              f"choose from: {', '.join(SPACE_VARIANTS)}")
        if variant == "auto":
            return "small" if self.is_small_input(input_shape) else "seed"
        if variant == "small" and not self.has_small_space:
            raise ConfigError(f"{self.name}: has no small-input space")
        return variant

    @property
    def has_small_space(self) -> bool:
        return type(self)._small_space is not ModelDef._small_space

    def is_small_input(self, input_shape: tuple[int, int, int]) -> bool:
        """Whether ``input_shape`` is too small for the seed's space (False: no small space)."""
        return False

    def check_weights(self, weights: str | None) -> str | None:
        """Refuse weights a model cannot use; ``None`` where the model takes none.

        A model that freezes a pre-trained part (``takes_weights``) overrides
        this to refuse running with that part random.  The default refuses
        any weights: the model has nothing to load them into.
        """
        if weights is not None:
            raise ConfigError(f"{self.name}: takes no pre-trained weights (--weights is for "
                              f"{', '.join(m for m in available_models() if get_model(m).takes_weights)})")
        return None

    # -- which heads did a params dict get? --------------------------------------
    # A two-headed model's outputs depend on ``num_coarse_classes`` at build
    # time, which ``output_names(params)`` cannot see.  The last few builds are
    # remembered by their params so that a caller that builds and then asks
    # without repeating ``num_coarse_classes`` still gets the right answer.

    _HEADS_MEMORY = 64

    @staticmethod
    def _params_key(params) -> str | None:
        try:
            return repr(sorted(params.items()))
        except Exception:  # unorderable or odd params: no memory
            return None

    def _remember_heads(self, params, names: list[str]) -> None:
        key = self._params_key(params)
        if key is None:
            return
        memory = self.__dict__.setdefault("_heads", OrderedDict())
        memory[key] = names
        memory.move_to_end(key)
        while len(memory) > self._HEADS_MEMORY:
            memory.popitem(last=False)

    def _recalled_heads(self, params) -> list[str] | None:
        key = self._params_key(params)
        memory = self.__dict__.get("_heads")
        if key is None or not memory:
            return None
        return memory.get(key)

    # -- to implement --------------------------------------------------------

    def _space(self, input_shape: tuple[int, int, int]) -> dict:
        raise NotImplementedError

    def _small_space(self, input_shape: tuple[int, int, int]) -> dict:
        raise NotImplementedError

    def _build(self, p, input_shape, num_classes, *, num_coarse_classes, weights):
        raise NotImplementedError

    # -- defaults for single-output models ----------------------------------

    def output_names(self, params: dict, *, num_coarse_classes: Any = _UNSET) -> list[str]:
        """Names of the model's outputs (and of its output layers)."""
        return ["output"]

    def loss_weights(self, params: dict, *, num_coarse_classes: Any = _UNSET) -> dict[str, float] | None:
        """``loss_weights`` for ``model.compile``; ``None`` for one output."""
        return None

    def learning_rate(self, params: dict) -> float:
        """The learning rate the optimizer should start with."""
        try:
            lr = float(params["learning_rate"])
        except KeyError:
            raise ConfigError(f"{self.name}: hyper-parameter 'learning_rate' is missing") from None
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.name}: hyper-parameter 'learning_rate' must be a number, "
                f"got {params['learning_rate']!r}"
            ) from None
        return lr

    def compile_kwargs(self, params: dict, *, num_coarse_classes: Any = _UNSET) -> dict:
        """``loss``, ``metrics`` and ``loss_weights`` for ``model.compile``.

        Sparse categorical cross-entropy and accuracy on every output; for
        several outputs they come as dicts keyed by output name, which Keras
        requires once ``loss_weights`` is a dict.
        """
        names = self.output_names(params, num_coarse_classes=num_coarse_classes)
        weights = self.loss_weights(params, num_coarse_classes=num_coarse_classes)
        if len(names) == 1:
            return {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
                    "loss_weights": weights}
        return {
            "loss": {n: "sparse_categorical_crossentropy" for n in names},
            "metrics": {n: ["accuracy"] for n in names},
            "loss_weights": weights,
        }

    def corners(self, input_shape: tuple[int, int, int], variant: str = "auto") -> list[dict]:
        """Concrete params at the extremes of :meth:`space` (every branch of
        every choice, smallest and largest value of every dimension)."""
        from mongotune.models._space import corners

        return corners(self.space(input_shape, variant=variant))

    def __repr__(self) -> str:
        return f"<ModelDef {self.name!r}>"


_REGISTRY: dict[str, ModelDef] = {}


def register(model_def: ModelDef) -> ModelDef:
    """Add a model definition (instance) to the zoo under its ``name``."""
    name = model_def.name
    if not name or name != name.strip().lower():
        raise ValueError(f"model names must be lower case and non-empty, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not model_def:
        raise ValueError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = model_def
    return model_def


_ZOO = ("baseline", "convstrix", "hyperresnet", "vggstrix")


def load_zoo() -> None:
    """Import the built-in model modules (Keras with them): they register
    themselves and the custom layers saved models need."""
    import importlib

    for module in _ZOO:
        importlib.import_module(f"mongotune.models.{module}")


def zoo_names() -> list[str]:
    """Names of the built-in models (each module of the zoo registers the model of its name) and of any
    model registered in this process, without importing Keras: what a launch checks a name against first."""
    return sorted(set(_ZOO) | set(_REGISTRY))


def check_model_name(name) -> str:
    """``name`` as the zoo spells it (lower case); ConfigError naming the choices if there is no such model."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in zoo_names():
        raise ConfigError(f"unknown model {name!r}; choose from: {', '.join(zoo_names())}")
    return key


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    load_zoo()
    return sorted(_REGISTRY)


def get_model(name: str) -> ModelDef:
    """The model definition called ``name`` (case-insensitive)."""
    load_zoo()
    key = name.strip().lower() if isinstance(name, str) else name
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown model {name!r}; choose from: {', '.join(available_models())}"
        ) from None
