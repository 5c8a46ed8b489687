"""Delta tables written by a real Delta engine (Sail), for the reader's tests.

Run with the Sail environment's Python (``.venv-sail``, made by ``scripts/setup.sh``): it starts
a local Sail Spark Connect server in this process, writes each table below ``OUT`` with the
features other engines use (deletion vectors after DELETEs, column mapping in ``name`` and ``id``
mode, a checkpoint, several versions, partitions), and saves what Sail itself reads from each
table as ``OUT/<name>.expected.parquet``: the protocol-complete answer lakecurate's reads are
compared with. Prints one JSON line: ``{name: {"version": ..., "rows": ...}}``.

    .venv-sail/bin/python tests/sail_tables.py OUT
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow.parquet as pq

D = 8


def main(out: str) -> None:
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    rows = ("id", f"transform(sequence(1, {D}), k -> cast(sin(id * k) as float)) as embedding",
            "concat('item ', cast(id % 13 as string)) as label")

    def create(name, columns, props, partitioned_by=None):
        location = os.path.join(out, name)
        part = f" PARTITIONED BY ({partitioned_by})" if partitioned_by else ""
        tbl = ", ".join(f"'{k}' = '{v}'" for k, v in props.items())
        spark.sql(f"CREATE TABLE {name} ({columns}) USING delta{part} LOCATION '{location}'"
                  + (f" TBLPROPERTIES ({tbl})" if tbl else ""))
        return location

    def append(location, start, n, *extra):
        spark.range(start, start + n).selectExpr(*rows, *extra).write.format("delta").mode("append").save(location)

    cols = "id BIGINT, embedding ARRAY<FLOAT>, label STRING"
    made = {}

    # deletion vectors: two appends, two DELETEs (one file gets a DV, then a second generation of it)
    loc = create("deletion_vectors", cols, {"delta.enableDeletionVectors": "true"})
    append(loc, 0, 1000)
    append(loc, 1000, 500)
    spark.sql(f"DELETE FROM delta.`{loc}` WHERE id < 100")
    spark.sql(f"DELETE FROM delta.`{loc}` WHERE id % 7 = 0")
    made["deletion_vectors"] = loc

    # column mapping, name mode (physical names in the files differ from the logical ones)
    loc = create("column_mapping_name", cols, {"delta.columnMapping.mode": "name"})
    append(loc, 0, 300)
    made["column_mapping_name"] = loc

    # column mapping, id mode
    loc = create("column_mapping_id", cols, {"delta.columnMapping.mode": "id"})
    append(loc, 0, 300)
    made["column_mapping_id"] = loc

    # a checkpoint every 2 commits, 5 versions
    loc = create("checkpointed", cols, {"delta.checkpointInterval": "2"})
    for i in range(4):
        append(loc, i * 100, 100)
    made["checkpointed"] = loc

    # partitioned by a string column whose values need escaping in a path
    loc = create("partitioned", cols + ", part STRING", {}, partitioned_by="part")
    append(loc, 0, 400, "case id % 3 when 0 then 'a b' when 1 then 'x=y' else 'ü/é' end as part")
    made["partitioned"] = loc

    # all at once: partitioned, column mapping, deletion vectors
    loc = create("everything", cols + ", part INT", {"delta.enableDeletionVectors": "true", "delta.columnMapping.mode": "name"},
                 partitioned_by="part")
    append(loc, 0, 600, "cast(id % 4 as int) as part")
    spark.sql(f"DELETE FROM delta.`{loc}` WHERE id % 5 = 0 OR part = 3")
    made["everything"] = loc

    # a curated-shaped table (what the training loaders read) with rows deleted by a deletion vector
    loc = create("curated_with_deletes", "id BIGINT, cluster BIGINT, path ARRAY<BIGINT>, run_id STRING",
                 {"delta.enableDeletionVectors": "true"})
    spark.range(0, 200).selectExpr("id", "id % 4 as cluster", "array(id % 4, id % 2) as path", "'r' as run_id") \
        .write.format("delta").mode("append").save(loc)
    spark.sql(f"DELETE FROM delta.`{loc}` WHERE id < 10")
    made["curated_with_deletes"] = loc

    facts = {}
    for name, loc in made.items():
        table = spark.read.format("delta").load(loc).toArrow()
        pq.write_table(table, os.path.join(out, f"{name}.expected.parquet"))
        facts[name] = {"rows": table.num_rows, "location": loc}
    spark.stop()
    server.stop()
    print(json.dumps(facts))


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
