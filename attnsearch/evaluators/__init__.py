"""evaluators: quality (proxy training on recall tasks and real text), throughput, memory."""
