"""The runtime-composition benchmark (``eigenmix bench compose``): the merge benchmark's
adapters, heads, splits and seeds, composed per input instead of merged.

``settings`` (what decides the numbers), ``passes`` (a routed pass over a split), ``routing``
(every router on the shuffled test stream, beside the static merges), ``cost`` (forward time
against the base model, PEFT Arrow and PEFT's mixed batch at K = 2…32), ``continual`` (adding
the modules one at a time: average accuracy and backward transfer), ``run`` (the protocol).
See ``benchmarks/README.md`` for the protocol in words.
"""
