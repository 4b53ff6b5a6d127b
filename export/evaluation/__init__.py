"""Evaluation that stands outside every optimisation: the independent judge of generated images.

Nothing that trains or optimises may import this package (an import-linter contract in
``pyproject.toml``): a judge that became an objective would stop measuring anything.
"""
