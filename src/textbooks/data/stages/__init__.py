"""The pipeline's stages, one module per stage named as the stage (``textbooks-data stage=<name>``); a helper
used by one stage only sits beside it as ``<stage>_<what>.py``."""
