import pytest

from tasks.ingest.source_schema import SchemaDriftError
from tasks.quality.drift import compare_signatures, drift_markdown, enforce_policy, signature_fields

BASE = "address.country:string,email:string,website:string"


def test_no_previous_run_or_same_shape_is_no_change():
    assert compare_signatures(None, BASE) is None
    assert compare_signatures(BASE, ",".join(reversed(BASE.split(",")))) is None


def test_pages_with_different_shapes_are_merged():
    assert signature_fields(f"{BASE} | {BASE},title:string") == {*BASE.split(","), "title:string"}


def test_added_field_is_additive():
    change = compare_signatures(BASE, BASE + ",title:string")
    assert change.added == ("title:string",) and change.removed == ()
    enforce_policy(change, "additive")
    enforce_policy(change, "ignore")
    with pytest.raises(SchemaDriftError, match="added title:string"):
        enforce_policy(change, "fail")


@pytest.mark.parametrize(
    "current",
    [
        "address.country:string,email:string",  # website gone
        "address.country:string,email:string,website:number",  # retyped
    ],
)
def test_removed_or_retyped_field_fails_under_additive(current):
    change = compare_signatures(BASE, current)
    assert not change.additive and "website:string" in change.removed
    with pytest.raises(SchemaDriftError, match="removed website:string"):
        enforce_policy(change, "additive")
    enforce_policy(change, "ignore")
    assert "stopped before loading" in drift_markdown(change, "additive", accepted=False)
