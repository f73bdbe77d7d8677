"""The text-task harness: what runs modules on real text-classification tasks (needs the
``hf`` extra). Below ``bench`` and the CLI; the maths packages (``spectral``, ``merging``,
``tune``, ``moe``) never import it.

- :mod:`~eigenmix.harness.evaluator`: a frozen encoder whose linears take merged weights,
  pre-tokenised splits, mean-pooled features, linear heads.
- :mod:`~eigenmix.harness.splits`: validation rows carved from a task's training rows.
- :mod:`~eigenmix.harness.tuning`: learning a composition's coefficients on such tasks.
- :mod:`~eigenmix.harness.tune_config`, :mod:`~eigenmix.harness.tune_run`: ``eigenmix tune``.
"""
