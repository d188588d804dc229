"""tfsynapse benchmarks: speed, training overhead, accuracy and scale, measured side by side.

    python -m benchmarks                    # everything; writes benchmarks/RESULTS.md
    python -m benchmarks --quick            # a 1-2 minute smoke run into a temporary folder
    python -m benchmarks --only speed,scale --output out/bench

Every section reports ratios (pruned / dense, wrapped / plain, ...) from interleaved, repeated
measurements: the machine is noisy, and a ratio of two things timed side by side survives
noise that absolute numbers do not. Each section is one module with ``run(ctx) -> dict`` and
``markdown(result) -> str``; ``common`` holds the timing helpers, the machine description and
the JSON/Markdown/plot writers.
"""

SECTIONS = ("speed", "speed_keras3", "speed_hub", "int8_layers", "int8_speed",
            "budget", "budget_latency", "budget_alloc",
            "overhead", "accuracy", "accuracy_ft", "accuracy_l1", "scale", "converter_memory")
