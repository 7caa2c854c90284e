"""Plug-ins of the platform: conversation formats, synthetic data generators and eval graders.

The platform knows the generic formats itself (OpenAI chat, ShareGPT, alpaca, chatml) and OpenAI's
graders (string check, text similarity, score and label model); a product's own line format, its
synthetic data generator and its domain graders come from plug-ins that installed packages
register as entry points, e.g. in their ``pyproject.toml``::

    [project.entry-points."coachforge.dataset_formats"]
    coach = "polarize.plugins:COACH_FORMAT"

    [project.entry-points."coachforge.synthetic_generators"]
    coach = "polarize.plugins:COACH_GENERATOR"

    [project.entry-points."coachforge.graders"]
    polarize_coach = "polarize.plugins:COACH_GRADER"

The entry point's name is the plug-in's name (what a file's format, a generator request or a
testing criterion's ``type`` is called) and must equal the object's ``name``; the object is an
instance or a class taking no arguments.  Plug-ins are typed structurally
(:class:`ConversationFormat`, :class:`SyntheticGenerator`, :class:`Grader` are protocols), so a
plug-in package need not import CoachForge.

Entry points are read once per process, on first use, and cached (:func:`clear_cache` makes
the next lookup read them again).  An unknown name is a :class:`~coachforge_shared.errors.NotFound`;
a plug-in that fails to load or does not fit its protocol is a :class:`PluginError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

from coachforge_shared.errors import NotFound

FORMAT_GROUP: Final = "coachforge.dataset_formats"
GENERATOR_GROUP: Final = "coachforge.synthetic_generators"
GRADER_GROUP: Final = "coachforge.graders"

ChatMessage: TypeAlias = Mapping[str, str]
"""One chat turn as a format plug-in returns it: ``{"role": "system"|"user"|"assistant", "content": ...}``."""

FieldIssue: TypeAlias = tuple[str, str]
"""One problem of a line: ``(field, reason)``, the field a JSON path such as ``modification.operations.0.op``."""


@runtime_checkable
class ConversationFormat(Protocol):
    """A line format of uploaded JSONL files, converted to chat turns.

    ``detect_order`` places the format among the dataset service's detectors, which try each
    format's :meth:`recognises` in ascending order (ties by name) and take the first that
    accepts a line; the built-in formats sit at 100 (openai), 200 (sharegpt), 300 (alpaca) and
    400 (chatml).  ``answer_label`` names this format's structured answer in quality reports
    (e.g. ``"workout modification"`` gives the reason ``invalid workout modification``).
    """

    name: str
    detect_order: int
    answer_label: str

    def recognises(self, obj: Mapping[str, Any]) -> bool:
        """Whether a decoded JSON line looks like this format (judged by its keys)."""
        ...

    def convert(self, obj: Mapping[str, Any]) -> tuple[Sequence[ChatMessage], Sequence[FieldIssue]]:
        """The line's chat turns (ending with the assistant's), or no turns and every problem found."""
        ...

    def check_answer(self, answer: str, *, own_format: bool) -> bool | None:
        """Whether a conversation's last assistant answer is a valid structured answer of this format.

        ``own_format`` says the conversation came from a line of this format.  ``None`` when the
        answer is not one of this format's (nothing to check).
        """
        ...


@runtime_checkable
class SyntheticGenerator(Protocol):
    """A seeded generator of training conversations."""

    name: str
    description: str

    def generate(self, count: int, seed: int) -> Iterable[Mapping[str, Any]]:
        """``count`` OpenAI chat records (``{"messages": [...]}``), the same ones for the same arguments."""
        ...


@runtime_checkable
class Grader(Protocol):
    """An eval grader: the testing criteria whose ``type`` is the plug-in's ``name``.

    The evaluator calls :meth:`validate` when an eval is created or updated and stores what it
    returns (its own ``type`` and ``name`` are kept as given or defaulted), then :meth:`grade` for
    every item of a run with that stored criterion.  A grader reads the item and the sample as
    they are (``sample``: ``output_text``, ``output_json`` (the answer parsed as JSON, else
    ``None``), ``model``).
    """

    name: str

    def validate(self, criterion: Mapping[str, Any]) -> dict[str, Any]:
        """The criterion checked and normalised (defaults filled in).

        Raises :class:`~coachforge_shared.errors.InvalidArgument`, or a ``ValueError`` (a plug-in
        that does not import CoachForge) whose optional ``param`` attribute names the field; the
        evaluator reports it as ``testing_criteria[i].<param>``.
        """
        ...

    def grade(self, criterion: Mapping[str, Any], item: Mapping[str, Any],
              sample: Mapping[str, Any]) -> tuple[float, bool, dict[str, Any]]:
        """``(score, passed, detail)`` for one item's sample; ``detail`` says why (JSON data).

        A wrong or malformed answer fails (it is not an exception); an exception (e.g. an item that
        lacks what the criterion needs) makes the evaluator record the grade as errored.
        """
        ...


class PluginError(RuntimeError):
    """An installed plug-in cannot be used: it fails to load, clashes with another or lacks a member."""


@cache
def _load(group: str) -> Mapping[str, object]:
    found: dict[str, object] = {}
    values: dict[str, str] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        if ep.name in values:
            if values[ep.name] == ep.value:
                continue  # the same package seen twice on the path
            raise PluginError(f"{group}: two plug-ins are named {ep.name!r} ({values[ep.name]} and {ep.value})")
        try:
            obj = ep.load()
            if isinstance(obj, type):
                obj = obj()
        except Exception as err:
            raise PluginError(f"{group}: plug-in {ep.name!r} ({ep.value}) failed to load: {err}") from err
        values[ep.name] = ep.value
        found[ep.name] = obj
    return MappingProxyType(found)


def _named(group: str, name: str, obj: object) -> str:
    """``name``, once sure the plug-in calls itself what its entry point calls it."""
    if getattr(obj, "name", None) != name:
        raise PluginError(f"{group}: plug-in {name!r} calls itself {getattr(obj, 'name', None)!r}")
    return name


@cache
def dataset_formats() -> Mapping[str, ConversationFormat]:
    """Every installed conversation-format plug-in by name."""
    typed: dict[str, ConversationFormat] = {}
    for name, obj in _load(FORMAT_GROUP).items():
        if not isinstance(obj, ConversationFormat):
            raise PluginError(f"{FORMAT_GROUP}: plug-in {name!r} ({obj!r}) is not a ConversationFormat")
        typed[_named(FORMAT_GROUP, name, obj)] = obj
    return MappingProxyType(typed)


@cache
def synthetic_generators() -> Mapping[str, SyntheticGenerator]:
    """Every installed synthetic-data-generator plug-in by name."""
    typed: dict[str, SyntheticGenerator] = {}
    for name, obj in _load(GENERATOR_GROUP).items():
        if not isinstance(obj, SyntheticGenerator):
            raise PluginError(f"{GENERATOR_GROUP}: plug-in {name!r} ({obj!r}) is not a SyntheticGenerator")
        typed[_named(GENERATOR_GROUP, name, obj)] = obj
    return MappingProxyType(typed)


@cache
def graders() -> Mapping[str, Grader]:
    """Every installed grader plug-in by name."""
    typed: dict[str, Grader] = {}
    for name, obj in _load(GRADER_GROUP).items():
        if not isinstance(obj, Grader):
            raise PluginError(f"{GRADER_GROUP}: plug-in {name!r} ({obj!r}) is not a Grader")
        typed[_named(GRADER_GROUP, name, obj)] = obj
    return MappingProxyType(typed)


def _installed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def dataset_format(name: str) -> ConversationFormat:
    """The conversation-format plug-in called ``name``; :class:`NotFound` (param ``format``) if none is installed."""
    formats = dataset_formats()
    if name not in formats:
        raise NotFound(f"No dataset format plug-in named {name!r} is installed (installed: {_installed(formats)}).",
                       param="format", code="format_not_found")
    return formats[name]


def synthetic_generator(name: str) -> SyntheticGenerator:
    """The generator plug-in called ``name``; :class:`NotFound` (param ``generator``) if none is installed."""
    generators = synthetic_generators()
    if name not in generators:
        raise NotFound(f"No synthetic data generator named {name!r} is installed "
                       f"(installed: {_installed(generators)}).", param="generator", code="generator_not_found")
    return generators[name]


def grader(name: str) -> Grader:
    """The grader plug-in called ``name``; :class:`NotFound` (param ``type``) if none is installed."""
    found = graders()
    if name not in found:
        raise NotFound(f"No grader plug-in named {name!r} is installed (installed: {_installed(found)}).",
                       param="type", code="grader_not_found")
    return found[name]


def clear_cache() -> None:
    """Forget what was read from the entry points (the next lookup reads them again)."""
    _load.cache_clear()
    dataset_formats.cache_clear()
    synthetic_generators.cache_clear()
    graders.cache_clear()
