"""Estimation with a trained model: log p^(x) from many samples, and active latent units.

* `estimation.log_marginal`: `log_marginal_estimate`, whose log weights come from the
  objectives' own forward pass (`mcobjectives.core.forward`), chunk by chunk;
* `estimation.activity`: `active_units`, the latent units whose posterior mean varies
  across the data.

Both functions are spelled `mcobjectives.X` (their one public spelling); this package
re-exports nothing itself.
"""

__all__: list[str] = []
