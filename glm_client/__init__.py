"""glm_client: the Python client library of glm-serve."""
