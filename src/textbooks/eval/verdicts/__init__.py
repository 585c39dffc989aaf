"""Samples -> verdicts: samples files read and sanitized, executed in the sandbox, scored (pass@k,
EvalPlus's rules for the plus sets)."""
