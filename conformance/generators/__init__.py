"""The conformance-vector generators, one per spec document: ``container`` (spec/SPEC.md), ``spqr``,
``squeezellm``, ``quip`` (spec/codecs/*.md, every codec version together; ``quip_rvq`` holds quip
v2's residual codebooks, quip.md §10.11, on ``quip``), on ``common``.

Each codec module holds the logical form of a tensor, its oracle and its valid and invalid vectors;
``conformance/generate.py`` orders the vectors and writes them. Imports run one way:
common <- spqr, squeezellm, quip <- quip_rvq, container.
"""
