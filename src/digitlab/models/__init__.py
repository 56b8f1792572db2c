"""The model families. Importing this package (as any import of digitlab.models.registry
does) imports every family module, which registers its models."""

from digitlab.models import cnn, mlp  # noqa: F401
