"""gsv: GPT-SoVITS v2 model core (models, checkpoints, text frontend, features, backends, pipeline).

Importing the package does no work; submodules are imported where they are used.
"""
__version__ = "0.1.0"
