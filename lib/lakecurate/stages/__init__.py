"""Pipeline stages. Each reads tables and writes tables keyed by run_id; nothing else is shared."""
