"""evaluators: quality (proxy training on recall tasks and real text), throughput, memory.

Quality: `evaluate_quality(arch, ProxySpec(...)) -> QualityResult` (quality.py), the seeded task
generators (tasks.py), the byte-level corpus (corpus.py), proxy down-scaling (proxy.py).
"""
