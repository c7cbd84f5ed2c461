"""Parts of the project whose API may still change between versions.

Nothing here is imported by `import mcobjectives`; import a module explicitly:

    from mcobjectives.experimental import mnist

* `mnist`: MNIST for experiments with the library (loading, dynamic binarization,
  Burda et al.'s models and the test-set evaluation), shared by `examples/`,
  `benchmarks/` and notebooks.
"""

__all__: list[str] = []
