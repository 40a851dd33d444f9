"""Link Python: a Jupyter kernel that turns notebook cells into a pipeline."""

__version__ = "0.1.0"
