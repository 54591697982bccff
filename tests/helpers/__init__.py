"""Code the tests share (import as ``helpers.<module>``; tests/ is on pytest's ``pythonpath``)."""
