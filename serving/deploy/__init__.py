"""Kubernetes deployment of an exported model repository: KServe InferenceServices or Triton Helm chart values."""
