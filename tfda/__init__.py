"""tfda: training-free diffusion data assimilation for AI weather models.

One namespace over the project's folders (setuptools ``package-dir`` in
pyproject.toml): ``tfda.da`` (sampler, scores, filters, cycle; no I/O),
``tfda.models`` (forecast models, tracker), ``tfda.observations`` (operators,
errors, ERA5, synthetic observations, best tracks) and ``tfda.experiments`` (the
``tfda`` commands). See README.md and docs/.
"""

__version__ = "0.2.0"
