"""Tooling around the services for operators and data scientists.

The main job (demo) and its report, benchmarks, the local stack and process launcher, catalogue
indexing. Never imported by the serving package.
"""
