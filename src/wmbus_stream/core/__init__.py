"""Sans-IO gateway core: pipeline, store, analyzer, report, schedule."""
