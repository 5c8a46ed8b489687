"""Arrow and Spark schemas of lakecurate's tables, and the check both backends run before a write."""

from __future__ import annotations

import pyarrow as pa

from lakecurate.errors import TableError


def arrow_schema(spark_schema) -> pa.Schema:
    """A Spark StructType as Arrow (timestamps in UTC)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(spark_schema, timezone="UTC")


def spark_schema(schema: pa.Schema):
    """An Arrow schema as a Spark StructType (delta-rs's view and large types as the plain ones Spark knows)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_large_list(t) or pa.types.is_list_view(t):
            t = pa.list_(t.value_type)
        fields.append(pa.field(f.name, t, f.nullable))
    return from_arrow_schema(pa.schema(fields), prefer_timestamp_ntz=False)


def normalise_type(t: pa.DataType) -> str:
    """A type as text, with the distinctions a Delta table does not keep (large/view types, list
    item names, nullability: Spark marks it per plan, not per table) left out."""
    s = str(t)
    for a, b in (("large_string", "string"), ("string_view", "string"), ("large_list", "list"), ("item: ", "element: ")):
        s = s.replace(a, b)
    return s.replace("element: ", "").replace("item", "").replace(" not null", "")


def check_same_schema(existing: pa.Schema, new: pa.Schema, name: str) -> None:
    """TableError naming the columns that differ when ``new`` (a write) does not match table ``name``'s schema."""
    old = {f.name: normalise_type(f.type) for f in existing}
    cur = {f.name: normalise_type(f.type) for f in new}
    if old != cur:
        missing = sorted(set(old) - set(cur))
        extra = sorted(set(cur) - set(old))
        changed = sorted(k for k in set(old) & set(cur) if old[k] != cur[k])
        raise TableError(
            f"table {name!r} has a different schema: missing columns {missing}, new columns {extra}, "
            f"changed types {[(k, old[k], cur[k]) for k in changed]}"
        )
