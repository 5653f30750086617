"""How each artifact is read and checked (stripped folders, exports, FP8 scales, engine sidecars).

Engines import these readers; the stages that write the artifacts (``strip``, ``compile/``,
``quantize/``) import them too, for the format names. Nothing here imports a producer.
"""
