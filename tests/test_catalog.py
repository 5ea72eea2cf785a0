"""The catalog: every model of every provider refuses bad input by field name and takes good input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest

from service.catalog import Catalog, Model, check_value, is_multiple_of, validate_input
from service.errors import ValidationFailed

CATALOG = Catalog.default()
SERVED = [(provider, model) for provider in CATALOG.providers() for model in CATALOG.models(provider)]
every_model = pytest.mark.parametrize(
    ("provider", "model"), SERVED, ids=[f"{provider}/{model.name}" for provider, model in SERVED]
)

# Deliberately wrong for each type; `True` also proves booleans are not integers.
WRONG_TYPE = {"string": 7, "integer": True, "number": "1.5", "boolean": 1}


def valid_value(spec: Mapping[str, Any]) -> Any:
    """A value the spec accepts, built from the spec itself."""
    if "default" in spec:
        return spec["default"]
    if "enum" in spec:
        return spec["enum"][-1]
    kind = spec["type"]
    if kind == "string":
        if spec.get("format") == "uri":
            return "https://example.com/input.png"
        return "16:9" if "pattern" in spec else "a lighthouse at dusk"
    if kind in ("integer", "number"):
        step = spec.get("multipleOf", 1)
        return math.ceil(spec.get("minimum", 0) / step) * step
    assert kind == "boolean", kind
    return True


def minimal_input(model: Model) -> dict[str, Any]:
    return {name: valid_value(model.parameters[name]) for name in model.required}


def full_input(model: Model) -> dict[str, Any]:
    return {name: valid_value(spec) for name, spec in model.parameters.items()}


def out_of_range(spec: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """Values one step past each bound, with the rule each breaks (and no other rule)."""
    step = spec.get("multipleOf", 1)
    cases = []
    if "maximum" in spec:
        cases.append((spec["maximum"] + step, "maximum"))
    if "minimum" in spec:
        cases.append((spec["minimum"] - step, "minimum"))
    return cases


def refusal(model: Model, value: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        validate_input(model, value)
    assert caught.value.status_code == 422
    return caught.value.details


@every_model
def test_minimal_input_passes(provider, model):
    value = minimal_input(model)
    assert validate_input(model, value) is value


@every_model
def test_every_parameter_at_a_valid_value_passes(provider, model):
    value = full_input(model)
    assert validate_input(model, value) == full_input(model)


@every_model
def test_out_of_range_value_names_the_field_and_the_limit(provider, model):
    ranged = {name: spec for name, spec in model.parameters.items() if out_of_range(spec)}
    if not ranged:
        pytest.skip(f"{provider}/{model.name} has no numeric parameter with a range")
    for name, spec in ranged.items():
        for bad, rule in out_of_range(spec):
            details = refusal(model, {**minimal_input(model), name: bad})
            assert details == [{"field": f"input.{name}", "rule": rule, rule: spec[rule],
                                "message": details[0]["message"]}], (name, bad)


@every_model
def test_wrong_type_is_reported_once_per_field(provider, model):
    value = {name: WRONG_TYPE[spec["type"]] for name, spec in model.parameters.items()}
    details = refusal(model, value)
    assert sorted(d["field"] for d in details) == sorted(f"input.{n}" for n in model.parameters)
    for detail in details:
        name = detail["field"].removeprefix("input.")
        assert detail["rule"] == "type"
        assert detail["expected"] == model.parameters[name]["type"]


@every_model
def test_missing_required_field_is_named(provider, model):
    for name in model.required:
        for value in ({k: v for k, v in minimal_input(model).items() if k != name},
                      {**minimal_input(model), name: None}):
            assert refusal(model, value) == [{"field": f"input.{name}", "rule": "required",
                                              "message": f"{name} is required"}]


@every_model
def test_unknown_field_lists_the_allowed_parameters(provider, model):
    [detail] = refusal(model, {**minimal_input(model), "colour": "red"})
    assert detail["field"] == "input.colour"
    assert detail["rule"] == "unknown_field"
    assert detail["allowed"] == sorted(model.parameters)


@every_model
def test_enum_violation_lists_the_allowed_values(provider, model):
    enums = {name: spec for name, spec in model.parameters.items() if "enum" in spec}
    if not enums:
        pytest.skip(f"{provider}/{model.name} has no enumerated parameter")
    for name, spec in enums.items():
        [detail] = refusal(model, {**minimal_input(model), name: "tiff"})
        assert (detail["field"], detail["rule"], detail["allowed"]) == (
            f"input.{name}", "enum", spec["enum"])


@every_model
def test_parameters_are_consistent_with_themselves(provider, model):
    for name, spec in model.parameters.items():
        assert spec.get("description"), name
        if "default" in spec:
            assert check_value(name, spec["default"], spec) == [], name
    assert set(model.required) <= set(model.parameters)
    has_image = "image_url" in model.parameters or "image_prompt" in model.parameters
    assert model.capabilities["image_input"] is has_image


@every_model
def test_capabilities_follow_the_provider(provider, model):
    expected = {"runcomfy": (False, True), "replicate": (True, True), "fal": (True, True)}.get(
        provider, (True, False))
    assert (model.capabilities["webhook"], model.capabilities["cancel"]) == expected
    assert set(model.capabilities) == {"webhook", "cancel", "image_input"}


def test_out_of_range_detail_is_exactly_the_documented_shape():
    details = refusal(CATALOG.find("bfl", "flux-pro-1.1"), {"prompt": "x", "safety_tolerance": 9})
    assert details == [{"field": "input.safety_tolerance", "rule": "maximum", "maximum": 6,
                        "message": "must be at most 6"}]


def test_every_offending_field_is_named_in_one_refusal():
    model = CATALOG.find("apiframe", "flux-2-dev")
    details = refusal(model, {"steps": 0, "guidance": 3.05, "aspect_ratio": "2:1", "seed": "1"})
    assert {(d["field"], d["rule"]) for d in details} == {
        ("input.prompt", "required"), ("input.steps", "minimum"), ("input.guidance", "multipleOf"),
        ("input.aspect_ratio", "enum"), ("input.seed", "type")}


@pytest.mark.parametrize(("value", "ok"), [
    (0.15, True), (0.17, False), (0.05, True), (1, True), (0, True), (0.1 + 0.2, True),
    (0.95, True), (0.999, False),
])
def test_float_steps_are_compared_as_decimals(value, ok):
    assert is_multiple_of(value, 0.05) is ok
    spec = CATALOG.find("apiframe", "flux-pro-1.1").parameters["image_prompt_strength"]
    assert spec["multipleOf"] == 0.05
    assert (check_value("s", value, spec) == []) is ok


def test_step_checks_never_overflow():
    assert is_multiple_of(10**400, 32)
    assert is_multiple_of(1e308, 0.1)
    assert not is_multiple_of(1000, 32)
    assert is_multiple_of(3.0, 0.1)
    [detail] = check_value("w", 10**400, {"type": "integer", "maximum": 1440, "multipleOf": 32})
    assert detail["rule"] == "maximum"


def test_width_must_be_a_multiple_of_32():
    [detail] = refusal(CATALOG.find("bfl", "flux-pro-1.1"), {"prompt": "x", "width": 1000})
    assert detail == {"field": "input.width", "rule": "multipleOf", "multipleOf": 32,
                      "message": "must be a multiple of 32"}


def test_runcomfy_kontext_edit_needs_a_public_https_image():
    model = CATALOG.find("runcomfy", "flux-kontext-pro")
    assert refusal(model, {"prompt": "make it snow"}) == [
        {"field": "input.image_url", "rule": "required", "message": "image_url is required"}]
    [detail] = refusal(model, {"prompt": "make it snow", "image_url": "http://example.com/a.png"})
    assert (detail["field"], detail["rule"]) == ("input.image_url", "pattern")


def test_flux_2_safety_tolerance_stops_at_5():
    for provider in ("bfl", "apiframe"):
        spec = CATALOG.find(provider, "flux-2-pro").parameters["safety_tolerance"]
        assert spec["maximum"] == 5


def test_non_object_input_is_refused():
    assert refusal(CATALOG.find("bfl", "flux-dev"), ["prompt"])[0]["field"] == "input"


def test_native_ids_find_the_unified_model():
    assert CATALOG.find("apiframe", "flux-1.1-pro").name == "flux-pro-1.1"
    assert CATALOG.find("apiframe", "flux-pro-1.1").native_id == "flux-1.1-pro"
    assert CATALOG.find("apiframe", "flux-1.1-pro-ultra").name == "flux-pro-1.1-ultra"
    edit = CATALOG.find("runcomfy", "blackforestlabs/flux-1-kontext/pro/edit")
    assert (edit.name, edit.required) == ("flux-kontext-pro", ("prompt", "image_url"))
    assert CATALOG.find("cometapi", "flux-pro").native_id == "flux-pro"
    # Another provider's id names the same model, so "auto" can fail over on it.
    assert CATALOG.find("bfl", "flux-1.1-pro").native_id == "flux-pro-1.1"
    assert CATALOG.find("runcomfy", "flux-pro-1.1") is None
    assert CATALOG.find("nowhere", "flux-dev") is None


@pytest.mark.parametrize(("name", "providers"), [
    ("flux-pro-1.1", ["bfl", "cometapi", "apiframe", "replicate", "fal"]),
    ("flux-1.1-pro", ["bfl", "cometapi", "apiframe", "replicate", "fal"]),
    ("black-forest-labs/flux-1.1-pro", ["bfl", "cometapi", "apiframe", "replicate", "fal"]),
    ("fal-ai/flux-pro/v1.1", ["bfl", "cometapi", "apiframe", "replicate", "fal"]),
    ("flux-pro-1.1-ultra", ["bfl", "cometapi", "apiframe", "replicate", "fal"]),
    ("flux-kontext-pro", ["bfl", "runcomfy", "replicate", "fal"]),
    ("blackforestlabs/flux-1-kontext/pro/edit", ["bfl", "runcomfy", "replicate", "fal"]),
    ("flux-2-dev", ["apiframe", "replicate", "fal"]),
    ("flux-schnell", ["replicate", "fal"]),
    ("flux-pro", ["cometapi"]),
    ("flux-9", []),
])
def test_serving_lists_providers_in_catalog_order(name, providers):
    assert CATALOG.serving(name) == providers


def test_providers_keep_the_default_failover_order():
    assert CATALOG.providers() == ["bfl", "cometapi", "apiframe", "runcomfy", "replicate", "fal"]


def test_fal_ids_and_ranges_are_fals():
    assert CATALOG.find("fal", "fal-ai/flux-pro/v1.1").name == "flux-pro-1.1"
    assert CATALOG.find("fal", "fal-ai/flux/schnell").parameters["steps"]["maximum"] == 12
    ultra = CATALOG.find("fal", "flux-pro-1.1-ultra")
    assert ultra.native_id == "fal-ai/flux-pro/v1.1-ultra"
    assert "webp" not in ultra.parameters["output_format"]["enum"]  # fal: jpeg or png
    # fal's safety tolerance is "1".."6": a BFL-valid 0 is refused, so `auto` skips fal for it.
    assert refusal(CATALOG.find("fal", "flux-pro-1.1"), {"prompt": "x", "safety_tolerance": 0})[0][
        "rule"] == "minimum"
    assert CATALOG.find("fal", "flux-2-pro").parameters["safety_tolerance"]["maximum"] == 5


def test_a_native_id_naming_two_models_is_refused():
    params = {"prompt": {"type": "string", "description": "p"}}
    with pytest.raises(ValueError, match="shared"):
        Catalog({"a": [Model("x", "shared", params)], "b": [Model("y", "shared", params)]})
    with pytest.raises(ValueError, match="x"):
        Catalog({"a": [Model("x", "x", params)], "b": [Model("y", "x", params)]})


def test_a_parameter_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="input_image"):
        Model("m", "m", {"prompt": {"type": "string"}, "input_image": {"type": "string"}})
    with pytest.raises(ValueError, match="image_url"):
        Model("m", "m", {"prompt": {"type": "string"}}, ("prompt", "image_url"))


def test_describe_lists_every_provider_and_model_with_a_closed_schema():
    described = CATALOG.describe()
    assert json.loads(json.dumps(described)) == described
    assert [p["name"] for p in described["providers"]] == CATALOG.providers()
    for entry in described["providers"]:
        assert [m["name"] for m in entry["models"]] == [m.name for m in CATALOG.models(entry["name"])]
        for model in entry["models"]:
            assert set(model) == {"name", "native_id", "parameters", "capabilities"}
            schema = model["parameters"]
            assert schema["type"] == "object"
            assert schema["additionalProperties"] is False
            assert set(schema["required"]) <= set(schema["properties"])
            found = CATALOG.find(entry["name"], model["name"])
            assert model["native_id"] == found.native_id
            assert set(schema["properties"]) == set(found.parameters)


def test_describe_returns_a_copy():
    described = CATALOG.describe()
    described["providers"][0]["models"][0]["parameters"]["properties"]["prompt"]["maxLength"] = 1
    assert CATALOG.describe() != described


@every_model
def test_schemas_are_valid_json_schema_2020_12(provider, model):
    jsonschema = pytest.importorskip("jsonschema")
    schema = next(m["parameters"] for p in CATALOG.describe()["providers"] if p["name"] == provider
                  for m in p["models"] if m["name"] == model.name)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(minimal_input(model))
    # jsonschema divides in binary floats (3 / 0.1 != 30), so float steps are left to
    # test_float_steps_are_compared_as_decimals.
    exact = {name: value for name, value in full_input(model).items()
             if not isinstance(model.parameters[name].get("multipleOf"), float)}
    assert validator.is_valid(exact)
    assert not validator.is_valid({**minimal_input(model), "colour": "red"})
    ranged = [(name, bad) for name, spec in model.parameters.items()
              for bad, _ in out_of_range(spec)]
    for name, bad in ranged:
        assert not validator.is_valid({**minimal_input(model), name: bad}), name
