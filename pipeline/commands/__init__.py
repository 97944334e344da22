"""The commands a user runs (``segflow replay | demo | generate | migrate | worker``).

They wire the adapters (sources, storage, stream, policy) around the pure core and own
everything a user sees: flags, progress, summaries, one-line errors. Nothing imports them
but the ``segflow`` entry point and tests.
"""
