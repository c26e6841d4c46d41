"""The branch-train-merge demo: generated tasks, CPU fine-tunes of MiniLM, and scoring.

It sits above the CLI layer and uses only the public library; torch and transformers are
imported lazily, inside the functions that need them.
"""
