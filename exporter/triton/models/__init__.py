"""Python-backend model sources that the exporter copies into Triton model versions."""
