"""Writes tests/fixtures/preference/: small preference files in the formats rmflow reads, made by
pyarrow (an implementation independent of the Apache Arrow Rust crates rmflow reads them with).

    python3 -m venv /tmp/pa && /tmp/pa/bin/pip install pyarrow
    /tmp/pa/bin/python scripts/preference_fixtures.py

tests/lm_preference_data.rs states what each file must read as.
"""
import os

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "preference")
os.makedirs(OUT, exist_ok=True)

STANDARD = {
    "prompt": ["What color is the sky?", "Translate «chat» to English.", "2 + 2 ="],
    "chosen": ["Blue.", "Cat.", "4"],
    "rejected": ["Green.", "Chat.", "5"],
    "score": [3, 1, 2],  # an extra column, ignored
}


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


CONVERSATIONAL_IMPLICIT = {
    "chosen": [
        msgs(("user", "What color is the sky?"), ("assistant", "It is blue.")),
        msgs(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris.")),
    ],
    "rejected": [
        msgs(("user", "What color is the sky?"), ("assistant", "It is green.")),
        msgs(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Lyon.")),
    ],
}

CONVERSATIONAL = {
    "question": [msgs(("user", "What color is the sky?"))],
    "good": [msgs(("assistant", "It is blue."))],
    "bad": [msgs(("assistant", "It is green."))],
}


def write(name, table, how):
    path = os.path.join(OUT, name)
    if how == "parquet":
        pq.write_table(table, path, compression="snappy")
    elif how == "parquet-gzip":
        pq.write_table(table, path, compression="gzip")
    elif how in ("parquet-zstd", "parquet-lz4", "parquet-brotli"):
        pq.write_table(table, path, compression=how.split("-")[1])
    elif how == "file":
        with ipc.new_file(path, table.schema) as w:
            w.write_table(table)
    elif how == "stream":
        with ipc.new_stream(path, table.schema) as w:
            for batch in table.to_batches(max_chunksize=2):  # several batches
                w.write_batch(batch)
    return path


def truncate(path, name):
    data = open(path, "rb").read()
    open(os.path.join(OUT, name), "wb").write(data[: len(data) // 2])


standard = pa.table(STANDARD)
write("standard.parquet", standard, "parquet")
write("standard_gzip.parquet", standard, "parquet-gzip")
write("standard_zstd.parquet", standard, "parquet-zstd")
write("standard_lz4.parquet", standard, "parquet-lz4")
write("standard_brotli.parquet", standard, "parquet-brotli")  # not built in: refused
write("standard.arrow", standard, "file")
large = pa.table({k: pa.array(v, pa.large_string()) for k, v in STANDARD.items() if k != "score"})
write("standard_large.arrows", large, "stream")
write("implicit_conversational.arrow", pa.table(CONVERSATIONAL_IMPLICIT), "file")
write("conversational.arrows", pa.table(CONVERSATIONAL), "stream")
nulls = pa.table({"prompt": ["a", "b"], "chosen": ["x", None], "rejected": ["y", "z"]})
write("null_chosen.parquet", nulls, "parquet")
wrong = pa.table({"prompt": ["a"], "chosen": [1], "rejected": ["y"]})
write("int_chosen.parquet", wrong, "parquet")
truncate(write("truncate_me.parquet", standard, "parquet"), "truncated.parquet")
truncate(write("truncate_me.arrows", standard, "stream"), "truncated.arrows")
for f in ["truncate_me.parquet", "truncate_me.arrows"]:
    os.remove(os.path.join(OUT, f))
empty = pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()), "rejected": pa.array([], pa.string())})
write("empty.parquet", empty, "parquet")
print("wrote", sorted(os.listdir(OUT)))
