"""The one registry type (dfscan.core.registry), the one error-text rule, and the tables built on them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dfscan.core.errors import UnknownName, first_line
from dfscan.core.registry import Factory, Registry


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    create: object


class UnknownThing(UnknownName):
    pass


def _things() -> Registry[Spec]:
    return Registry("thing", UnknownThing, extra_names=("auto",), entries=(
        Spec("b", "the second letter", lambda x=1: ("b", x)),
        Spec("a", "the first letter", lambda x=1: ("a", x)),
    ))


def test_entries_keep_registration_order_and_read_like_a_mapping() -> None:
    things = _things()
    assert things.names() == ("b", "a") and list(things) == ["b", "a"] and len(things) == 2
    assert "a" in things and "auto" not in things and "c" not in things and ["a"] not in things
    assert things["a"] is things.get("a") and things["a"].name == "a"
    assert [name for name, _ in things.items()] == ["b", "a"] and [s.name for s in things.values()] == ["b", "a"]
    assert dict(zip(things.keys(), things.values())) == dict(things.items())
    assert things.description("b") == "the second letter"


def test_unknown_name_raises_the_registrys_own_error_listing_the_known_names() -> None:
    things = _things()
    with pytest.raises(UnknownThing) as err:
        things.get("c")
    assert str(err.value) == "unknown thing 'c'; known things: auto, b, a"
    # One error type: a KeyError for mapping-style lookups, a ValueError for a bad user value.
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(KeyError):
        things["c"]
    with pytest.raises(UnknownThing):
        things.get(["unhashable"])  # type: ignore[arg-type]
    assert str(things.unknown("auto2")) == "unknown thing 'auto2'; known things: auto, b, a"


def test_message_plural_and_hints_are_the_registrys() -> None:
    reg = Registry("face detector", message="unknown {kind} {name!r}; known: {known}", entries={"mtcnn": 1})
    assert str(reg.unknown("x")) == "unknown face detector 'x'; known: mtcnn"
    reg = Registry("precision", plural="precisions", hints={"bf16": "bf16 runs with --runtime torch"},
                   entries={"fp32": 1})
    assert str(reg.unknown("bf16")) == (
        "unknown precision 'bf16'; known precisions: fp32; bf16 runs with --runtime torch"
    )


def test_register_as_a_call_and_as_a_decorator_and_create_by_name() -> None:
    reg: Registry = Registry("blur")
    spec = Spec("box", "box blur", lambda radius=1: f"box{radius}")
    assert reg.register(spec) is spec
    assert reg.register("identity", Spec("identity", "no blur", lambda radius=0: "same")).name == "identity"

    @reg.register(description="gaussian blur")
    def gauss(radius: float = 1.0) -> str:
        return f"gauss{radius}"

    @reg.register("median")
    def _median(radius: int = 1) -> str:
        """Median of the neighbourhood.

        More text that is not the description.
        """
        return f"median{radius}"

    assert gauss(2) == "gauss2"  # the decorator gives the function back unchanged
    assert reg.names() == ("box", "identity", "gauss", "median")
    assert isinstance(reg["gauss"], Factory) and reg.description("gauss") == "gaussian blur"
    assert reg.description("median") == "Median of the neighbourhood."
    assert reg.create("box", radius=3) == "box3" and reg.create("gauss", 0.5) == "gauss0.5"
    assert reg.create("median") == "median1"
    with pytest.raises(UnknownName, match="unknown blur 'sharpen'; known blurs: box, identity, gauss, median"):
        reg.create("sharpen")


def test_create_uses_the_registrys_factory() -> None:
    @dataclass(frozen=True)
    class Loader:
        name: str
        load: object

    reg = Registry("runtime", factory=lambda spec: spec.load, entries=(Loader("cpu", lambda n: n * 2),))
    assert reg.create("cpu", 21) == 42


def test_registering_twice_or_without_a_name_is_refused() -> None:
    things = _things()
    with pytest.raises(ValueError, match="registered twice"):
        things.register(Spec("a", "again", None))
    with pytest.raises(ValueError, match="registered twice"):
        things.register("auto", object())  # a name the caller handles itself
    with pytest.raises(TypeError, match="has no name"):
        things.register(object())
    with pytest.raises(TypeError, match="subclass of UnknownName"):
        Registry("thing", KeyError)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "limit", "expected"),
    [
        (ValueError("first\nsecond"), 200, "first"),
        (ValueError("  \n  padded line  \nsecond"), 200, "padded line  "),
        (ValueError(""), 200, "ValueError"),
        (RuntimeError(" \n\t "), 200, "RuntimeError"),
        (OSError("x" * 500), 200, "x" * 200),
        (OSError("x" * 500), 300, "x" * 300),
        (OSError("x" * 500), None, "x" * 500),
        (KeyError("k"), 200, "'k'"),  # str() of the exception, as every copy took it
    ],
)
def test_first_line(exc: BaseException, limit: int | None, expected: str) -> None:
    assert first_line(exc, limit) == expected


def test_first_line_matches_the_rule_it_replaced() -> None:
    for text in ["", "one", "one\ntwo", "\n\nthree\n", " lead\ttab", "x" * 400 + "\ny", "\x0bvt\nnext"]:
        exc = RuntimeError(text)
        for limit in (160, 200, 300):
            old = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
            assert first_line(exc, limit) == old


# -- the tables converted to the one registry type ----------------------------------------------------


def test_the_named_tables_are_registries_with_their_own_errors() -> None:
    from dfscan.detector.errors import DetectorError, UnknownBackbone
    from dfscan.trt.errors import RuntimeErrorBase, UnknownPrecision, UnknownRuntime
    from dfscan.trt.precisions import PRECISIONS, get_precision
    from dfscan.trt.registry import RUNTIMES, get_runtime_spec
    from dfscan.workers.faces.detectors import FACE_DETECTORS, create_face_detector
    from dfscan.workers.images.decoders import DECODERS, resolve_decoder
    from dfscan.workers.reading.errors import UnknownDecoder, UnknownFaceDetector
    from dfscan.workers.video._containers import CONTAINERS, container_for

    for table in (PRECISIONS, RUNTIMES, FACE_DETECTORS, DECODERS, CONTAINERS):
        assert isinstance(table, Registry)
    with pytest.raises(UnknownRuntime, match="unknown runtime 'x'; known runtimes: auto, onnxruntime, tensorrt, torch"):
        get_runtime_spec("x")
    with pytest.raises(UnknownPrecision, match=r"known precisions: fp32, fp16, int8; bf16 runs with --runtime torch"):
        get_precision("bf16")
    with pytest.raises(UnknownDecoder, match="known decoders: auto, pillow, dali, dali-gpu, dali-cpu"):
        resolve_decoder("nvjpeg")
    # An unknown face detector is a face-detector error, not a decoder's.
    with pytest.raises(UnknownFaceDetector, match="unknown face detector 'retina'; known: mtcnn") as err:
        create_face_detector("retina")
    assert not isinstance(err.value, UnknownDecoder)
    assert issubclass(UnknownRuntime, RuntimeErrorBase) and issubclass(UnknownPrecision, RuntimeErrorBase)
    assert issubclass(UnknownBackbone, DetectorError) and issubclass(UnknownBackbone, UnknownName)
    assert container_for(b"\x1a\x45\xdf\xa3" + bytes(60)).name == "matroska" and container_for(bytes(64)) is None


def test_one_precision_table_for_settings_cli_and_tensorrt() -> None:
    from dfscan.commands.gpu import PRECISION_NAMES
    from dfscan.core.constants import ALL_PRECISIONS, precisions_for
    from dfscan.core.settings import PRECISIONS as SETTING_PRECISIONS
    from dfscan.core.settings import Settings, SettingsError
    from dfscan.trt.precisions import PRECISIONS

    assert SETTING_PRECISIONS == ALL_PRECISIONS.names() == ("fp32", "fp16", "bf16", "int8")
    assert PRECISION_NAMES == PRECISIONS.names() == precisions_for("tensorrt") == ("fp32", "fp16", "int8")
    assert all(PRECISIONS[name] is ALL_PRECISIONS[name] for name in PRECISIONS)
    with pytest.raises(SettingsError, match="unknown precision 'fp8'; known: fp32, fp16, bf16, int8"):
        Settings(precision="fp8").validate()


def test_the_cli_reports_an_unknown_name_in_one_line() -> None:
    import click

    from dfscan.commands._options import reports_errors
    from dfscan.workers.faces.detectors import create_face_detector

    @reports_errors
    def command() -> None:
        create_face_detector("retina")

    with pytest.raises(click.ClickException, match="^unknown face detector 'retina'; known: mtcnn$"):
        command()
