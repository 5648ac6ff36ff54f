"""Benchmarks of afnio-langchain: wall time against the critical-path bound, against
TextGrad, and engine overhead. Run ``python benchmarks/run.py`` (see README.md here)."""
