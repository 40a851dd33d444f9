"""Moving pipelines and their results between people (SPEC §6).

`pipeline_json`: components and their DAG as a versioned JSON document, and back into cells.
`cache_archive`: component results as a signed, checksummed `.tar.gz`, and back into a store.
"""
