"""stageline's benchmark suite, side by side with its peers (``python -m bench``).

Every comparison runs stageline and the peer in the same invocation on the same
machine and reports their ratio. See ``bench/README.md``.
"""
