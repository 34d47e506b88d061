"""The conformance-vector generators, one per spec document: ``container`` (spec/SPEC.md), ``spqr``,
``squeezellm``, ``quip`` (spec/codecs/*.md, every codec version together), on ``common``.

Each codec module holds the logical form of a tensor, its oracle and its valid and invalid vectors;
``conformance/generate.py`` orders the vectors and writes them. Imports run one way:
common <- spqr, squeezellm, quip <- container.
"""
