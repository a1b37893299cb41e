"""Spaces shared by the search tests (imported by name: tests/ has no packages)."""

TEST_SPACE = {
    # 8 layers, 4 mechanisms: 5 of the 6 literature baselines fit (pure linear does not)
    "target": {"d_model": 256, "n_layers": 8, "n_heads": 4, "head_dim": 64, "vocab_size": 1000,
               "context_len": 4096, "batch_tokens": 65536, "gpu": "H100"},
    "layout": {"mode": "pattern", "periods": [1, 2, 4, 8]},
    "mechanisms": {"full": {}, "sliding_window": {"window": [1024, 4096]}, "mamba2": {}, "gated_deltanet": {}},
    "objectives": ["quality", "throughput"],
    "sampler": {"name": "tpe", "seed": 0},
}
