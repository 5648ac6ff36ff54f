"""Reliability tests against an HTTP server written here with the standard library
(``_stdlib_server``), independently of ``afnio_langchain.testing``."""
